"""Data: readers for BraTS / nnU-Net / MALC / HVSMR / manifest folders, label conventions,
preprocessing with an on-disk cache, a fast patch pipeline with augmentation, and built-in
phantom datasets (``synth``). Submodules are imported lazily: ``import attnseg.data`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from attnseg.data.errors import DataError

_LAZY = {
    # readers
    "Case": "readers", "find_cases": "readers", "load_case": "readers", "detect_layout": "readers",
    "validate_cases": "readers",
    # labels
    "brats_to_classes": "labels", "brats_to_regions": "labels", "regions_to_brats": "labels",
    "classes_to_brats": "labels", "classes_to_regions": "labels", "regions_to_classes": "labels",
    "remap_labels": "labels",
    # io
    "load_image": "io", "save_image": "io",
    # preprocessing / cache
    "CaseCache": "cache", "PreprocessConfig": "preprocess", "preprocess_case": "preprocess",
    "restore_prediction": "preprocess",
    # datasets
    "PatchDataset": "dataset", "VolumeDataset": "dataset", "AugmentConfig": "augment",
    # phantoms
    "make_synth_brats": "synth", "make_synth_tissue": "synth",
}

__all__ = ["DataError", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"attnseg.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'attnseg.data' has no attribute {name!r}")
