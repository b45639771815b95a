"""The one exception type raised for bad input data."""

from __future__ import annotations


class DataError(ValueError):
    """Problem with the input data (missing, unreadable or inconsistent files).

    The message always names the offending file or folder first, e.g.
    ``"/data/BraTS20_001/BraTS20_001_seg.nii.gz: label values {3} not in declared set {0, 1, 2, 4}"``.
    Subclasses ``ValueError`` so the CLI prints it as a single clear line.
    """
