"""Label conventions: BraTS labels ↔ classes ↔ overlapping regions, and generic remapping.

BraTS conventions (values in the ``seg`` files):

============  ===========  =========  =========
convention    NCR/NET      ED         ET
============  ===========  =========  =========
brats2020     1            2          4          (BraTS 2018–2021)
brats2023     1            2          3          (BraTS 2023+, "NETC/SNFH/ET")
============  ===========  =========  =========

*Classes* are the exclusive labels 0 = background, 1 = NCR/NET, 2 = ED, 3 = ET.
*Regions* are the overlapping evaluation regions, in the order **(ET, TC, WT)**:
ET = class 3, TC = classes 1 ∪ 3, WT = classes 1 ∪ 2 ∪ 3, so ET ⊂ TC ⊂ WT.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attnseg.data.errors import DataError

BRATS_CONVENTIONS: dict[str, tuple[int, int, int, int]] = {
    # BraTS value of class (bg, NCR/NET, ED, ET)
    "brats2020": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
}
CLASS_NAMES = ("background", "NCR/NET", "ED", "ET")
REGION_NAMES = ("ET", "TC", "WT")
# region r contains class c  (rows ET, TC, WT; columns classes 0..3)
_REGION_OF_CLASS = np.array([[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]], dtype=bool)


def _convention(convention: str) -> tuple[int, int, int, int]:
    if convention in ("brats2018", "brats2019", "brats2021"):
        convention = "brats2020"
    if convention in ("brats2024", "brats2025"):
        convention = "brats2023"
    if convention not in BRATS_CONVENTIONS:
        raise ValueError(f"unknown BraTS label convention {convention!r}; choose from {sorted(BRATS_CONVENTIONS)}")
    return BRATS_CONVENTIONS[convention]


def declared_labels(convention: str) -> tuple[int, ...]:
    """Label values allowed in a segmentation file of this convention."""
    return tuple(sorted(_convention(convention)))


def remap_labels(label: np.ndarray, mapping: Mapping[int, int], default: int | None = 0,
                 dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """Map label values with ``mapping`` (old → new), vectorised.

    Values not in ``mapping`` become ``default``; with ``default=None`` they raise
    :class:`DataError` listing the unexpected values (e.g. choosing a subset of MALC's
    structures: ``remap_labels(lab, {0: 0, 17: 1, 53: 2})``).
    """
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise DataError("label map has non-integer values")
        label = label.astype(np.int64)
    keys = np.array(sorted(mapping), dtype=np.int64)
    vals = np.array([mapping[int(k)] for k in keys], dtype=np.int64)
    if label.size == 0:
        return label.astype(dtype)
    lo, hi = int(label.min()), int(label.max())
    if lo >= 0 and hi < 65536:  # lookup table: one gather, the fast path for real label maps
        lut_default = -1 if default is None else default
        lut = np.full(max(hi, int(keys.max()) if keys.size else 0) + 1, lut_default, dtype=np.int64)
        lut[keys[keys >= 0]] = vals[keys >= 0]
        out = lut[label]
    else:
        idx = np.clip(np.searchsorted(keys, label), 0, max(len(keys) - 1, 0))
        found = keys.size > 0 and (keys[idx] == label)
        out = np.where(found, vals[idx] if keys.size else 0, -1 if default is None else default)
    if default is None and np.any(out == -1) and -1 not in vals:
        bad = sorted(set(np.unique(label).tolist()) - set(keys.tolist()))
        raise DataError(f"label values {bad} not in mapping {dict(zip(keys.tolist(), vals.tolist()))}")
    return out.astype(dtype)


def brats_to_classes(label: np.ndarray, convention: str = "brats2020") -> np.ndarray:
    """BraTS label map → classes 0..3 (bg, NCR/NET, ED, ET) as uint8; unknown values raise."""
    values = _convention(convention)
    return remap_labels(label, {v: c for c, v in enumerate(values)}, default=None)


def classes_to_brats(classes: np.ndarray, convention: str = "brats2020") -> np.ndarray:
    """Classes 0..3 → BraTS label values of ``convention`` (uint8)."""
    values = _convention(convention)
    return remap_labels(classes, dict(enumerate(values)), default=None)


def classes_to_regions(classes: np.ndarray) -> np.ndarray:
    """Classes 0..3 (spatial) → (3, *spatial) bool regions (ET, TC, WT)."""
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() > 3):
        raise DataError(f"class map must hold 0..3, found {sorted(np.unique(classes).tolist())}")
    return _REGION_OF_CLASS[:, classes.astype(np.intp)]


def brats_to_regions(label: np.ndarray, convention: str = "brats2020") -> np.ndarray:
    """BraTS label map → (3, *spatial) bool regions in the order (ET, TC, WT)."""
    return classes_to_regions(brats_to_classes(label, convention))


def regions_to_classes(regions: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(3, *spatial) regions (ET, TC, WT) → classes 0..3, enforcing ET ⊂ TC ⊂ WT.

    ``regions`` may be bool/0-1 masks or probabilities (binarised at ``threshold``).
    Non-nested predictions are resolved **upwards**: a voxel predicted ET is ET even where
    TC or WT was not predicted (TC := TC ∪ ET, WT := WT ∪ TC). So ET → class 3,
    TC∖ET → 1 (NCR/NET), WT∖TC → 2 (ED). The reference's ``discretize_labels`` instead
    assigns in the order ET, TC, WT, so that ET=1, TC=0, WT=1 became oedema while ET=1,
    TC=WT=0 stayed ET; here both cases give ET. Exact inverse of :func:`classes_to_regions`.
    """
    r = np.asarray(regions)
    if r.ndim < 2 or r.shape[0] != 3:
        raise ValueError(f"regions must have shape (3, *spatial) ordered (ET, TC, WT), got {r.shape}")
    if r.dtype != bool:
        r = r > threshold
    et = r[0]
    tc = r[1] | et
    wt = r[2] | tc
    out = np.zeros(et.shape, dtype=np.uint8)
    out[wt] = 2
    out[tc] = 1
    out[et] = 3
    return out


def regions_to_brats(regions: np.ndarray, convention: str = "brats2020", threshold: float = 0.5) -> np.ndarray:
    """(3, *spatial) regions (ET, TC, WT) → BraTS label map (nesting enforced, see :func:`regions_to_classes`)."""
    return classes_to_brats(regions_to_classes(regions, threshold), convention)
