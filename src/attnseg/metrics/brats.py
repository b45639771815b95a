"""Per-region scores with the BraTS empty-region conventions, and the BraTS 2023 lesion-wise
scores exactly as the official BraTS 2023 script computes them.

attnseg's empty-region rules in the manner of the BraTS challenges before 2023 (``empty="brats"``,
applied to every region, not only ET as in the PANet reference; not a transcription of an
official script, whose own rules are :func:`lesion_wise_scores`' ``legacy_*`` values):

=========================  ==========  =========================================
reference / prediction     Dice        HD95 (and ASSD)
=========================  ==========  =========================================
both empty                 1           0
reference empty, pred not  0           373.13 (= diagonal of a 240×240×155 grid)
pred empty, reference not  0           373.13 (an infinite distance is capped)
both non-empty             formula     formula, capped at 373.13
=========================  ==========  =========================================

Jaccard follows Dice (1 / 0). Sensitivity stays ``nan`` for an empty reference, specificity
is always defined. With ``empty="nan"`` undefined values stay ``nan``/``inf`` (MONAI's
behaviour with ``ignore_empty=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from attnseg.metrics.core import (
    HD95_METHODS,
    _check_method,
    as_bool,
    assd,
    confusion,
    hd95,
    surface_distances,
    volume_difference,
)

__all__ = [
    "BRATS_MAX_HD95",
    "CHALLENGES",
    "LESION_PENALTY",
    "METRICS",
    "REGIONS",
    "binary_scores",
    "brats_region_scores",
    "lesion_wise_scores",
]

BRATS_MAX_HD95 = 373.13
LESION_PENALTY = 374.0
REGIONS = ("ET", "TC", "WT")
METRICS = ("dice", "hd95", "jaccard", "sensitivity", "specificity", "assd", "volume_diff", "ref_voxels",
           "pred_voxels")


def binary_scores(pred, ref, spacing: Sequence[float] | None = None, empty: str = "brats",
                  hd_method: str = "monai", max_distance: float = BRATS_MAX_HD95) -> dict[str, float]:
    """All metrics of one binary mask pair: dice, hd95, jaccard, sensitivity, specificity, assd,
    volume_diff (voxels, or mm³ with ``spacing``), ref_voxels, pred_voxels.

    ``hd_method``: ``"monai"``, ``"pooled"`` or ``"deepmind"`` definition of HD95 (see
    :func:`attnseg.metrics.core.hd95`); ASSD is the mean over both surfaces for ``monai`` and
    ``pooled`` (MONAI, MedPy ≥ 0.5) and DeepMind's area-weighted one for ``deepmind``.
    ``empty``: ``"brats"`` applies the legacy rules of the module docstring (distances also
    capped at ``max_distance``); ``"nan"`` leaves undefined values as ``nan``/``inf``.
    """
    _check_method(hd_method, HD95_METHODS)
    if empty not in ("brats", "nan"):
        raise ValueError(f"empty must be 'brats' or 'nan', got {empty!r}")
    p, r = as_bool(pred), as_bool(ref)
    tp, fp, fn, tn = confusion(p, r)
    n_p, n_r = tp + fp, tp + fn
    out: dict[str, float] = {
        "dice": 2 * tp / (n_p + n_r) if n_p + n_r else float("nan"),
        "jaccard": tp / (tp + fp + fn) if tp + fp + fn else float("nan"),
        "sensitivity": tp / n_r if n_r else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "volume_diff": volume_difference(p, r, spacing),
        "ref_voxels": float(n_r),
        "pred_voxels": float(n_p),
    }
    if n_p and n_r and hd_method == "deepmind":
        out["hd95"], out["assd"] = hd95(p, r, spacing, "deepmind"), assd(p, r, spacing, "deepmind")
    elif n_p and n_r:
        a, b = surface_distances(p, r, spacing)
        both = np.concatenate([a, b])
        out["hd95"] = (float(max(np.percentile(a, 95), np.percentile(b, 95))) if hd_method == "monai"
                       else float(np.percentile(both, 95)))
        out["assd"] = float(both.mean())
    else:
        out["hd95"] = float("nan") if not (n_p or n_r) else float("inf")
        out["assd"] = out["hd95"]
    if empty == "brats":
        if not n_p and not n_r:
            out.update(dice=1.0, jaccard=1.0, hd95=0.0, assd=0.0)
        elif not n_p or not n_r:
            out.update(dice=0.0, jaccard=0.0, hd95=max_distance, assd=max_distance)
        else:
            out["hd95"] = min(out["hd95"], max_distance)
            out["assd"] = min(out["assd"], max_distance)
    return out


def brats_region_scores(pred_regions, ref_regions, spacing: Sequence[float] | None = None, empty: str = "brats",
                        hd_method: str = "monai", regions: Sequence[str] = REGIONS) -> dict[str, dict[str, float]]:
    """Scores per region of (R, *spatial) boolean region stacks (default order ET, TC, WT).

    Returns ``{region: binary_scores(...)}``.
    """
    p, r = as_bool(pred_regions), as_bool(ref_regions)
    if p.shape != r.shape or p.shape[0] != len(regions):
        raise ValueError(f"expected ({len(regions)}, *spatial) region stacks of equal shape, got {p.shape} and "
                         f"{r.shape}")
    return {name: binary_scores(p[i], r[i], spacing, empty, hd_method) for i, name in enumerate(regions)}


# (dilation iterations, lesion volume threshold in mm³) of the BraTS 2023 script, per sub-challenge
CHALLENGES: dict[str, tuple[int, float]] = {"GLI": (3, 50.0), "SSA": (3, 50.0), "MEN": (1, 50.0), "PED": (3, 50.0),
                                            "MET": (1, 2.0)}


def _grow(mask: np.ndarray, structure: np.ndarray, iterations: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``binary_dilation(mask, structure, iterations)`` on the mask's bounding box plus the reach
    of the dilation: ``(dilated crop, crop box)``. Identical to dilating the whole image."""
    idx = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - iterations, 0), int(i.max()) + iterations + 1) for i in idx)
    grown = ndimage.binary_dilation(mask[box], structure, iterations=iterations) if iterations > 0 else mask[box]
    return grown, box


def lesion_wise_scores(pred, ref, spacing: Sequence[float] | None = None, challenge: str = "GLI", *,
                       dilation: int | None = None, volume_threshold: float | None = None,
                       hd_method: str = "deepmind", penalty: float = LESION_PENALTY) -> dict[str, Any]:
    """BraTS 2023 lesion-wise scores of one region (a binary mask pair), as the official script
    (``rachitsaluja/BraTS-2023-Metrics``, ``eval.py``) computes them.

    ``spacing``: voxel sizes in mm in array-axis order (the script reads them from the
    prediction's header; default 1 mm). ``challenge`` sets ``dilation`` (iterations) and
    ``volume_threshold`` (mm³): GLI, SSA, PED 3 / 50; MEN 1 / 50; MET 1 / 2 (both can be
    overridden). ``hd_method="deepmind"`` is the script's HD95 (needs ``surface-distance``).

    Procedure:
      1. lesions: 26-connected components (8 in 2-D) of the reference and of the prediction;
      2. the reference is dilated ``dilation`` times with the 18-neighbourhood structure
         (``generate_binary_structure(3, 2)``); reference lesions inside one 26-connected
         component of the dilated reference are merged into one lesion (numbered in C order of
         the dilated components, as the script's ``cc3d`` labels are);
      3. each reference lesion, dilated the same way, matches every predicted component it
         overlaps; its Dice and HD95 are computed against the union of those whole components
         (no match: Dice 0, HD95 ``inf`` → ``penalty``);
      4. every predicted component matched by no reference lesion is a false positive, whatever
         its size;
      5. reference lesions with volume (voxels × product of ``spacing``) ``<= volume_threshold``
         are left out of the scores and of Num_TP / Num_FN;
      6. lesion-wise Dice = Σ Dice over counted lesions / (counted lesions + false positives);
         lesion-wise HD95 = (Σ HD95 + ``penalty`` × false positives) / the same count; with
         nothing to count Dice 1 and HD95 0.

    Returns ``dict(dice, hd95, num_tp, num_fp, num_fn, legacy_dice, legacy_hd95, sensitivity,
    specificity, gt_volume, lesions)``; the legacy columns are the script's whole-region scores
    (Dice 1 and HD95 0 when both are empty, HD95 ``penalty`` when one is; sensitivity 1 when both
    are empty); ``lesions`` is the per-lesion table: ``lesion`` (number), ``volume`` (mm³),
    ``dice``, ``hd95``, ``matched`` (predicted component numbers), ``counted`` (volume above
    the threshold).
    """
    if challenge not in CHALLENGES:
        raise ValueError(f"unknown BraTS challenge {challenge!r}; choose from {tuple(CHALLENGES)}")
    dil = CHALLENGES[challenge][0] if dilation is None else int(dilation)
    thr = CHALLENGES[challenge][1] if volume_threshold is None else float(volume_threshold)
    _check_method(hd_method, HD95_METHODS)
    p, r = as_bool(pred), as_bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    nd = p.ndim
    sp = (1.0,) * nd if spacing is None else tuple(float(v) for v in spacing)
    if len(sp) != nd:
        raise ValueError(f"spacing has {len(sp)} values for a {nd}-D mask")

    def volume(n: int) -> float:
        v = float(n)
        for s in sp:  # voxels × sx × sy × sz, multiplied in this order as the script does
            v = v * s
        return v

    # whole-region ("legacy") columns of the script
    tp, fp, fn, tn = confusion(p, r)
    n_p, n_r = tp + fp, tp + fn
    if not n_p and not n_r:
        legacy_dice, legacy_hd = 1.0, 0.0
    else:
        legacy_dice = 2.0 * tp / (n_p + n_r)
        legacy_hd = hd95(p, r, sp, hd_method)
    sens = tp / (tp + fn) if tp + fn else 0.0
    sens = 1.0 if not n_p and not n_r else sens
    spec = tn / (tn + fp) if tn + fp else 0.0

    full = ndimage.generate_binary_structure(nd, nd)
    struct = ndimage.generate_binary_structure(nd, 2)
    pred_cc, n_pred = ndimage.label(p, full)
    lesions: list[dict[str, Any]] = []
    matched_all: set[int] = set()
    if n_r:
        grown, box = _grow(r, struct, dil)
        merged_cc, n_ref = ndimage.label(grown, full)  # C-order numbering, as cc3d numbers it
        ref_cc = np.zeros(r.shape, merged_cc.dtype)
        ref_cc[box] = np.where(r[box], merged_cc, 0)
        pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
        pred_boxes = ndimage.find_objects(pred_cc)
        for k, lb in enumerate(ndimage.find_objects(ref_cc), start=1):
            # the lesion's box plus the dilation's reach holds the whole dilated lesion
            ebox = tuple(slice(max(s.start - dil, 0), min(s.stop + dil, n)) for s, n in zip(lb, r.shape))
            g_loc = ref_cc[ebox] == k
            g_grown = ndimage.binary_dilation(g_loc, struct, iterations=dil) if dil > 0 else g_loc
            hits = np.unique(pred_cc[ebox][g_grown])
            hits = hits[hits > 0]
            matched_all.update(hits.tolist())
            n_g = int(np.count_nonzero(g_loc))
            if hits.size:
                # crop to the union of the lesion's and the matched components' boxes
                boxes = [lb] + [pred_boxes[h - 1] for h in hits.tolist()]
                cb = tuple(slice(min(bx[ax].start for bx in boxes), max(bx[ax].stop for bx in boxes))
                           for ax in range(nd))
                m, g = np.isin(pred_cc[cb], hits), ref_cc[cb] == k
                d = 2.0 * int(np.count_nonzero(m & g)) / (int(pred_sizes[hits].sum()) + n_g)
                h = hd95(m, g, sp, hd_method)
            else:
                d, h = 0.0, float("inf")
            vol = volume(n_g)
            lesions.append({"lesion": k, "volume": vol, "dice": d, "hd95": penalty if math.isinf(h) else h,
                            "matched": hits.tolist(), "counted": vol > thr})
    n_fp = n_pred - len(matched_all)
    counted = [x for x in lesions if x["counted"]]
    n = len(counted) + n_fp
    if n:
        lw_dice = float(np.sum(np.array([x["dice"] for x in counted], np.float64)) / n)
        lw_hd = float((np.sum(np.array([x["hd95"] for x in counted], np.float64)) + n_fp * penalty) / n)
    else:
        lw_dice, lw_hd = 1.0, 0.0
    return {"dice": lw_dice, "hd95": lw_hd,
            "num_tp": sum(1 for x in counted if x["matched"]), "num_fp": n_fp,
            "num_fn": sum(1 for x in counted if not x["matched"]),
            "legacy_dice": float(legacy_dice), "legacy_hd95": penalty if math.isinf(legacy_hd) else float(legacy_hd),
            "sensitivity": float(sens), "specificity": float(spec), "gt_volume": volume(n_r), "lesions": lesions}
