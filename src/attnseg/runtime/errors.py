"""Errors for faults of the environment (disk, memory, concurrent jobs): each carries one line
that names the file or setting concerned, printed by the CLI without a traceback."""

from __future__ import annotations


class FaultError(RuntimeError):
    """A fault of the environment that attnseg detected and turned into a one-line message."""


class DiskFullError(FaultError):
    """A write failed for lack of space (ENOSPC, EDQUOT or the file-size limit, EFBIG)."""


class FolderLockedError(FaultError):
    """Another live process holds the run or prediction folder."""


class OutOfMemoryFault(FaultError):
    """Inference ran out of memory; the message names the settings to lower."""
