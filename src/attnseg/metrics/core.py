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
B, found with a k-d tree on the surface voxels (never a distance transform of the volume).
This is what MONAI and MedPy both do; they differ only in how they summarise the two directed
distance sets — see :func:`hd95`. DeepMind's surface-distance package (the BraTS 2023 script)
uses surface elements on the voxel-corner grid weighted by area instead:
:func:`deepmind_surface_distances`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from attnseg.runtime.optional import require

__all__ = [
    "ASSD_METHODS",
    "HD95_METHODS",
    "as_bool",
    "assd",
    "confusion",
    "deepmind_surface_distances",
    "dice",
    "hausdorff",
    "hd95",
    "jaccard",
    "sensitivity",
    "specificity",
    "surface_distances",
    "volume_difference",
]

HD95_METHODS = ("monai", "pooled", "deepmind")
ASSD_METHODS = ("monai", "pooled", "mean_of_means", "deepmind")


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


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the True voxels (None when empty)."""
    box = []
    for ax in range(mask.ndim):
        proj = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != ax)))
        if proj.size == 0:
            return None
        box.append(slice(int(proj[0]), int(proj[-1]) + 1))
    return tuple(box)


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """(n, ndim) int64 indices of the surface voxels in C order: voxels with a face neighbour
    outside the mask (outside the image counts as background). Only the mask's bounding box is
    copied and only its voxels are examined (six neighbour look-ups each)."""
    box = _box(mask)
    if box is None:
        return np.zeros((0, mask.ndim), np.int64)
    m = np.ascontiguousarray(np.pad(mask[box], 1))  # C order (np.pad keeps Fortran order): flat indices below
    flat = m.ravel()
    idx = np.flatnonzero(flat)
    inner = np.ones(idx.size, bool)
    for stride in (int(np.prod(m.shape[ax + 1:])) for ax in range(m.ndim)):
        inner &= flat[idx - stride]
        inner &= flat[idx + stride]
    pts = np.stack(np.unravel_index(idx[~inner], m.shape), axis=1)
    return pts + (np.array([b.start for b in box], np.int64) - 1)


def _spacing(spacing: Sequence[float] | None, nd: int) -> tuple[float, ...]:
    sp = (1.0,) * nd if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != nd:
        raise ValueError(f"spacing has {len(sp)} values for a {nd}-D mask")
    return sp


def _nearest(src: np.ndarray, dst: np.ndarray, sp: tuple[float, ...]) -> np.ndarray:
    """Distance from every point of ``src`` to its nearest point of ``dst`` (index arrays).

    The nearest point comes from a k-d tree on the points (the surfaces only, not the volume);
    the distance is then computed from the integer offsets exactly as
    ``scipy.ndimage.distance_transform_edt`` computes it (offset × spacing per axis, squared,
    summed in axis order, square root), so the values equal those of a distance transform."""
    if src.shape[0] == 0:
        return np.zeros(0)
    if dst.shape[0] == 0:
        return np.full(src.shape[0], np.inf)

    scale = np.asarray(sp, np.float64)
    _, idx = cKDTree(dst * scale).query(src * scale)
    off = (dst[idx] - src).astype(np.float64) * scale
    off *= off
    sq = off[:, 0].copy()
    for ax in range(1, off.shape[1]):
        sq += off[:, ax]
    return np.sqrt(sq)


def surface_distances(pred, ref, spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(pred→ref, ref→pred)`` as float64 arrays (one value per
    surface voxel of the source mask, in C order of the voxels). An empty target gives ``inf``
    for every source voxel; an empty source gives an empty array."""
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    sp_, sr = _surface_points(p), _surface_points(r)
    return _nearest(sp_, sr, sp), _nearest(sr, sp_, sp)


@functools.lru_cache(maxsize=32)
def _deepmind_tables(spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(2×…×2 neighbour-code kernel, code → surfel area/length table) of DeepMind's
    surface-distance package for this spacing."""
    # optional: the surfel areas are DeepMind's marching-cubes table, not re-derived here
    lookup_tables = require("surface_distance.lookup_tables", "brats2023",
                            "DeepMind's surface-distance package, for the 'deepmind' HD95 and the BraTS 2023 scores")
    if len(spacing) == 3:
        return (np.asarray(lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL),
                np.asarray(lookup_tables.create_table_neighbour_code_to_surface_area(spacing), np.float64))
    if len(spacing) == 2:
        return (np.asarray(lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL),
                np.asarray(lookup_tables.create_table_neighbour_code_to_contour_length(spacing), np.float64))
    raise ValueError(f"the 'deepmind' definition supports 2-D and 3-D masks, not {len(spacing)}-D")


def _surfels(mask: np.ndarray, kernel: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeepMind surface elements of a mask: ``(corner indices (n, ndim), areas (n,))``.

    Every corner of the voxel grid gets the code of its 2×…×2 neighbourhood (the kernel's bit
    weights; corner ``c`` lies between voxels ``c − 1`` and ``c`` along each axis); corners whose
    neighbourhood is neither empty nor full are surface elements, with the area (2-D: length)
    the table gives for their code. Computed on the mask's bounding box only."""
    box = _box(mask)
    nd = mask.ndim
    if box is None:
        return np.zeros((0, nd), np.int64), np.zeros(0)
    m = np.pad(mask[box], 1).astype(np.uint8)
    out_shape = tuple(n - 1 for n in m.shape)
    code = np.zeros(out_shape, np.uint8)
    for a in np.ndindex(*kernel.shape):
        code += m[tuple(slice(o, o + n) for o, n in zip(a, out_shape))] * np.uint8(kernel[a])
    full = int(kernel.sum())
    border = (code != 0) & (code != full)
    pts = np.argwhere(border) + np.array([b.start for b in box], np.int64)
    return pts, table[code[border]]


def deepmind_surface_distances(pred, ref, spacing: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """DeepMind ``surface_distance.compute_surface_distances(ref, pred, spacing)``, computed on
    the surface elements only: sorted directed distances and the matching surfel areas.

    Keys ``ref_to_pred``, ``ref_areas``, ``pred_to_ref``, ``pred_areas``; each distance array is
    sorted by (distance, area) like DeepMind's. Needs the ``surface-distance`` package (its
    surfel-area table)."""
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    kernel, table = _deepmind_tables(sp)
    (pp, pa), (rp, ra) = _surfels(p, kernel, table), _surfels(r, kernel, table)
    out = {}
    for name, src, areas, dst in (("ref_to_pred", rp, ra, pp), ("pred_to_ref", pp, pa, rp)):
        d = _nearest(src, dst, sp)
        order = np.lexsort((areas, d))
        out[name], out[name.split("_")[0] + "_areas"] = d[order], areas[order]
    return out


def _deepmind_percentile(d: np.ndarray, areas: np.ndarray, percentile: float) -> float:
    # the first distance at which the cumulative surfel area reaches `percentile` % (DeepMind's
    # compute_robust_hausdorff, one direction)
    if d.size == 0:
        return float("inf")
    cum = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cum, percentile / 100.0))
    return float(d[min(idx, d.size - 1)])


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

    ``method`` (see docs/metrics.md for who uses which):
      * ``"monai"`` (default; MONAI ``HausdorffDistanceMetric(percentile=95)``): the 95th
        percentile of each directed set of surface-voxel distances, then the larger of the two.
      * ``"pooled"`` (MedPy ``hd95``, panoptica, hence the BraTS 2024+ package): the 95th
        percentile of the union of both directed sets.
      * ``"deepmind"`` (DeepMind ``compute_robust_hausdorff``, used by the BraTS 2023 script):
        surface elements on the voxel-corner grid weighted by their area; per direction the
        smallest distance at which the cumulative area reaches 95 %, then the larger of the two.
        Needs the ``surface-distance`` package (``attnseg[brats2023]``).
    Percentiles of ``monai``/``pooled`` interpolate linearly between order statistics.
    """
    method = _check_method(method, HD95_METHODS)
    p, r = _pair(pred, ref)
    if not p.any() and not r.any():
        return float("nan")
    if not p.any() or not r.any():
        return float("inf")
    if method == "deepmind":
        s = deepmind_surface_distances(p, r, spacing)
        return max(_deepmind_percentile(s["ref_to_pred"], s["ref_areas"], percentile),
                   _deepmind_percentile(s["pred_to_ref"], s["pred_areas"], percentile))
    a, b = surface_distances(p, r, spacing)
    if method == "monai":
        return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))
    return float(np.percentile(np.concatenate([a, b]), percentile))


def assd(pred, ref, spacing: Sequence[float] | None = None, method: str = "monai") -> float:
    """Average symmetric surface distance; ``nan`` if both masks are empty, ``inf`` if one is.

    ``"monai"`` and ``"pooled"`` (MONAI ``SurfaceDistanceMetric(symmetric=True)``, MedPy ≥ 0.5
    ``assd``): mean over the union of both directed distance sets, so every surface voxel counts
    once. ``"mean_of_means"`` (MedPy ≤ 0.4 ``assd``, the AMIS reference's ASSD): the mean of the
    two directed means, so the smaller surface weighs as much as the larger one.
    ``"deepmind"``: mean of DeepMind's two area-weighted directed averages
    (``compute_average_surface_distance``).
    """
    method = _check_method(method, ASSD_METHODS)
    p, r = _pair(pred, ref)
    if not p.any() and not r.any():
        return float("nan")
    if not p.any() or not r.any():
        return float("inf")
    if method == "deepmind":
        s = deepmind_surface_distances(p, r, spacing)
        return float((np.sum(s["ref_to_pred"] * s["ref_areas"]) / np.sum(s["ref_areas"])
                      + np.sum(s["pred_to_ref"] * s["pred_areas"]) / np.sum(s["pred_areas"])) / 2)
    a, b = surface_distances(p, r, spacing)
    if method == "mean_of_means":
        return float((a.mean() + b.mean()) / 2)
    return float(np.concatenate([a, b]).mean())


def _check_method(method: str, allowed: tuple[str, ...]) -> str:
    if method == "medpy":
        raise ValueError("method 'medpy' was renamed: 'pooled' is MedPy's hd95 (and MedPy >= 0.5 assd); "
                         "'mean_of_means' is the assd of MedPy <= 0.4")
    if method not in allowed:
        raise ValueError(f"unknown method {method!r}; choose from {allowed}")
    return method
