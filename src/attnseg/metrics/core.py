"""Binary-mask segmentation metrics: overlap (Dice, Jaccard, sensitivity, specificity, volume
difference) and surface distances (Hausdorff, HD95, ASSD), in voxels or in mm.

All functions take two boolean arrays of the same shape (numpy or torch, any number of
spatial dimensions) and return a Python float. Undefined values are ``nan`` (e.g. Dice of two
empty masks) or ``inf`` (a distance to an empty mask); the BraTS conventions that replace them
live in :mod:`attnseg.metrics.brats`.

Surfaces and distances
----------------------
The surface of a mask is the set of its voxels that have at least one face neighbour outside
the mask (``mask XOR erode(mask)`` with the face-connectivity cross; outside the image counts
as background). The distance of a surface voxel of A to B is the Euclidean distance (physical
units when ``spacing`` is given) from its centre to the centre of the nearest surface voxel of
B. This is what MONAI and MedPy both do; they differ only in how they summarise the two
directed distance sets — see :func:`hd95`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "HD95_METHODS",
    "as_bool",
    "assd",
    "confusion",
    "dice",
    "hausdorff",
    "hd95",
    "jaccard",
    "sensitivity",
    "specificity",
    "surface_distances",
    "volume_difference",
]

HD95_METHODS = ("monai", "medpy")


def as_bool(x) -> np.ndarray:
    """Boolean numpy array from a numpy array or torch tensor (non-zero = True)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if x.dtype == bool else x != 0


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p, r = as_bool(pred), as_bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    return p, r


def confusion(pred, ref) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) voxel counts."""
    p, r = _pair(pred, ref)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def dice(pred, ref) -> float:
    """2|P∩R| / (|P| + |R|); ``nan`` when both masks are empty."""
    tp, fp, fn, _ = confusion(pred, ref)
    den = 2 * tp + fp + fn
    return 2 * tp / den if den else float("nan")


def jaccard(pred, ref) -> float:
    """|P∩R| / |P∪R|; ``nan`` when both masks are empty."""
    tp, fp, fn, _ = confusion(pred, ref)
    den = tp + fp + fn
    return tp / den if den else float("nan")


def sensitivity(pred, ref) -> float:
    """TP / (TP + FN) (recall); ``nan`` when the reference is empty."""
    tp, _, fn, _ = confusion(pred, ref)
    return tp / (tp + fn) if tp + fn else float("nan")


def specificity(pred, ref) -> float:
    """TN / (TN + FP); ``nan`` when the reference covers the whole image."""
    _, fp, _, tn = confusion(pred, ref)
    return tn / (tn + fp) if tn + fp else float("nan")


def volume_difference(pred, ref, spacing: Sequence[float] | None = None, relative: bool = False) -> float:
    """Signed volume difference |P| − |R| in voxels (mm³ with ``spacing``); with ``relative``
    the ratio (|P| − |R|) / |R| (``nan`` when the reference is empty)."""
    p, r = _pair(pred, ref)
    diff = float(np.count_nonzero(p)) - float(np.count_nonzero(r))
    if relative:
        n = np.count_nonzero(r)
        return diff / n if n else float("nan")
    return diff * (float(np.prod(spacing)) if spacing is not None else 1.0)


def _surface(mask: np.ndarray) -> np.ndarray:
    # face-connectivity erosion with the outside of the image counted as background
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def surface_distances(pred, ref, spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(pred→ref, ref→pred)`` as float64 arrays (one value per
    surface voxel of the source mask). An empty target gives ``inf`` for every source voxel;
    an empty source gives an empty array."""
    p, r = _pair(pred, ref)
    nd = p.ndim
    sp = None if spacing is None else tuple(float(s) for s in spacing)
    if sp is not None and len(sp) != nd:
        raise ValueError(f"spacing has {len(sp)} values for a {nd}-D mask")
    union = p | r
    if not union.any():
        return np.zeros(0), np.zeros(0)
    # crop to the union's bounding box plus one voxel: every surface voxel lies inside it,
    # so distances between surfaces are unchanged and the transforms are much smaller
    idx = np.nonzero(union)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    p, r = p[box], r[box]
    sp_, sr = _surface(p), _surface(r)

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not src.any():
            return np.zeros(0)
        if not dst.any():
            return np.full(int(np.count_nonzero(src)), np.inf)
        return ndimage.distance_transform_edt(~dst, sampling=sp)[src].astype(np.float64)

    return directed(sp_, sr), directed(sr, sp_)


def hausdorff(pred, ref, spacing: Sequence[float] | None = None) -> float:
    """Maximum symmetric surface distance; ``nan`` if both masks are empty, ``inf`` if one is."""
    a, b = surface_distances(pred, ref, spacing)
    if a.size == 0 and b.size == 0:
        return float("nan")
    if a.size == 0 or b.size == 0:
        return float("inf")
    return float(max(a.max(), b.max()))


def hd95(pred, ref, spacing: Sequence[float] | None = None, method: str = "monai", percentile: float = 95.0) -> float:
    """95th-percentile Hausdorff distance; ``nan`` if both masks are empty, ``inf`` if one is.

    ``method``:
      * ``"monai"`` (default; MONAI ``HausdorffDistanceMetric(percentile=95)``, also the BraTS
        CaPTk definition): the 95th percentile of each directed surface-distance set, then the
        larger of the two.
      * ``"medpy"`` (MedPy ``hd95``): the 95th percentile of the union of both directed sets.
    Percentiles interpolate linearly between order statistics (numpy/torch default).
    """
    if method not in HD95_METHODS:
        raise ValueError(f"unknown HD95 method {method!r}; choose from {HD95_METHODS}")
    a, b = surface_distances(pred, ref, spacing)
    if a.size == 0 and b.size == 0:
        return float("nan")
    if a.size == 0 or b.size == 0:
        return float("inf")
    if method == "monai":
        return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))
    return float(np.percentile(np.concatenate([a, b]), percentile))


def assd(pred, ref, spacing: Sequence[float] | None = None, method: str = "monai") -> float:
    """Average symmetric surface distance; ``nan`` if both masks are empty, ``inf`` if one is.

    ``"monai"`` (default; MONAI ``SurfaceDistanceMetric(symmetric=True)``): mean over the union
    of both directed distance sets, so every surface voxel counts once. ``"medpy"`` (MedPy
    ``assd``, used by the AMIS reference): the mean of the two directed means, so the smaller
    surface weighs as much as the larger one.
    """
    if method not in HD95_METHODS:
        raise ValueError(f"unknown ASSD method {method!r}; choose from {HD95_METHODS}")
    a, b = surface_distances(pred, ref, spacing)
    if a.size == 0 and b.size == 0:
        return float("nan")
    if a.size == 0 or b.size == 0:
        return float("inf")
    if method == "medpy":
        return float((a.mean() + b.mean()) / 2)
    return float(np.concatenate([a, b]).mean())
