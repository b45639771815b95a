"""Per-region scores with the BraTS empty-region conventions, and the BraTS 2023 lesion-wise variant.

Legacy BraTS rules (``empty="brats"``, applied to every region, not only ET as in the PANet
reference):

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

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from attnseg.metrics.core import (
    HD95_METHODS,
    as_bool,
    confusion,
    surface_distances,
    volume_difference,
)

__all__ = [
    "BRATS_MAX_HD95",
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

    ``hd_method``: ``"monai"`` or ``"medpy"`` definitions of HD95 and ASSD (see
    :func:`attnseg.metrics.core.hd95` / :func:`~attnseg.metrics.core.assd`).
    ``empty``: ``"brats"`` applies the legacy rules of the module docstring (distances also
    capped at ``max_distance``); ``"nan"`` leaves undefined values as ``nan``/``inf``.
    """
    if hd_method not in HD95_METHODS:
        raise ValueError(f"unknown HD95 method {hd_method!r}; choose from {HD95_METHODS}")
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
    if n_p and n_r:
        a, b = surface_distances(p, r, spacing)
        both = np.concatenate([a, b])
        out["hd95"] = (float(max(np.percentile(a, 95), np.percentile(b, 95))) if hd_method == "monai"
                       else float(np.percentile(both, 95)))
        out["assd"] = float(both.mean()) if hd_method == "monai" else float((a.mean() + b.mean()) / 2)
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


def lesion_wise_scores(pred, ref, spacing: Sequence[float] | None = None, dilation: int = 3,
                       min_lesion_voxels: int = 50, penalty: float = LESION_PENALTY,
                       hd_method: str = "monai") -> dict[str, Any]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region.

    Procedure (re-implemented from the challenge description):
      1. reference and prediction lesions = 26-connected components (8 in 2-D);
      2. reference lesions that touch after dilating the reference ``dilation`` times with the
         full 3×3×3 structure are merged into one lesion;
      3. each reference lesion is matched to every predicted lesion that overlaps the lesion
         dilated ``dilation`` times; its Dice/HD95 are computed against the union of the
         matched predicted lesions (no match: Dice 0, HD95 = ``penalty``);
      4. predicted lesions matched to no reference lesion are false positives (Dice 0, HD95 =
         ``penalty`` each);
      5. reference lesions and false-positive lesions under ``min_lesion_voxels`` are ignored;
      6. lesion-wise score = sum over counted lesions / (counted reference lesions + false positives).
    Both empty (after step 5): Dice 1, HD95 0.

    Returns ``dict(dice, hd95, ref_lesions, fp_lesions, lesions=[per-lesion dicts])``.
    """
    p, r = as_bool(pred), as_bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    full = ndimage.generate_binary_structure(p.ndim, p.ndim)
    pred_cc, n_pred = ndimage.label(p, full)
    ref_cc, _ = ndimage.label(r, full)
    if dilation > 0 and r.any():
        merged, _ = ndimage.label(ndimage.binary_dilation(r, full, iterations=dilation), full)
        ref_cc = np.where(r, merged, 0)
    matched: set[int] = set()
    lesions = []
    for lid in np.unique(ref_cc[ref_cc > 0]).tolist():
        g = ref_cc == lid
        grown = ndimage.binary_dilation(g, full, iterations=dilation) if dilation > 0 else g
        hits = np.unique(pred_cc[grown & (pred_cc > 0)]).tolist()
        matched.update(hits)
        n_g = int(g.sum())
        if n_g < min_lesion_voxels:
            continue
        if hits:
            m = np.isin(pred_cc, hits)
            s = binary_scores(m, g, spacing, "nan", hd_method)
            d, h = s["dice"], min(s["hd95"], penalty)
        else:
            d, h = 0.0, penalty
        lesions.append({"lesion": int(lid), "voxels": n_g, "dice": float(d), "hd95": float(h), "matched": len(hits)})
    sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    fp = [c for c in range(1, n_pred + 1) if c not in matched and sizes[c] >= min_lesion_voxels]
    n = len(lesions) + len(fp)
    if n == 0:
        return {"dice": 1.0, "hd95": 0.0, "ref_lesions": 0, "fp_lesions": 0, "lesions": []}
    return {"dice": sum(x["dice"] for x in lesions) / n,
            "hd95": (sum(x["hd95"] for x in lesions) + penalty * len(fp)) / n,
            "ref_lesions": len(lesions), "fp_lesions": len(fp), "lesions": lesions}
