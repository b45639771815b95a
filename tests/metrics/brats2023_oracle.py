"""Test oracle: the BraTS 2023 lesion-wise evaluation, transcribed step by step from the official
script (github.com/rachitsaluja/BraTS-2023-Metrics, ``eval.py`` at commit 0e272e6, the same
procedure as ``brats_2023_metrics/surface_distance/brats_metrics.py``), written for these tests
only. It keeps the script's structure on purpose (whole-image arrays, one loop per lesion,
``cc3d`` labels, DeepMind ``surface_distance`` distances, a pandas table per region) so that
attnseg's own implementation is checked against the procedure itself, not a paraphrase.

Deviations that cannot change a value:
* the pip ``surface-distance`` 0.1 insists on bool masks (the copy the script was run with did
  not), so the 0/1 masks are passed as bool; it still uses ``np.Inf`` (gone in numpy 2): aliased;
* ``DataFrame.replace(np.inf, 374)`` is applied to the numeric columns only (pandas 3 refuses to
  compare the column of predicted-component arrays with a number);
* ``DataFrame.append`` (gone in pandas 2) only built the per-lesion CSV the script never wrote:
  left out.
"""

from __future__ import annotations

import math
import sys

import numpy as np

if not hasattr(np, "Inf"):  # surface-distance 0.1 still spells infinity np.Inf
    np.Inf = np.inf

import cc3d  # noqa: E402
import nibabel as nib  # noqa: E402
import pandas as pd  # noqa: E402
import surface_distance  # noqa: E402
from scipy import ndimage  # noqa: E402

PARAMETERS = {"BraTS-GLI": (3, 50), "BraTS-SSA": (3, 50), "BraTS-MEN": (1, 50), "BraTS-PED": (3, 50),
              "BraTS-MET": (1, 2)}


def _region(array: np.ndarray, region: str) -> np.ndarray:
    # WT = labels 1, 2, 3; TC = 1, 3; ET = 3 (anything else is background), written in place
    keep = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}[region]
    np.place(array, ~np.isin(array, keep), 0)
    np.place(array, array > 0, 1)
    return array


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _robust_hd95(gt: np.ndarray, pred: np.ndarray, spacing) -> float:
    sd = surface_distance.compute_surface_distances(np.asarray(gt).astype(bool), np.asarray(pred).astype(bool),
                                                    spacing)
    return surface_distance.compute_robust_hausdorff(sd, 95)


def _sens_spec(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    # GaNDLF's formula as eval.py has it (sys.float_info.min in the denominators)
    n_pred, n_gt = np.sum(pred), np.sum(gt)
    agree = np.where(pred == gt, 1, 0)
    tp = agree[pred == 1].sum()
    fp, fn = n_pred - tp, n_gt - tp
    tn = np.count_nonzero((pred != 1) & (gt != 1))
    sens = 1.0 * tp / (tp + fn + sys.float_info.min)
    spec = 1.0 * tn / (tn + fp + sys.float_info.min)
    if n_pred == 0 and n_gt == 0:
        sens = 1.0
    return sens, spec


def _merge_by_dilation(dilated_cc: np.ndarray, gt_cc: np.ndarray) -> np.ndarray:
    out = np.zeros_like(dilated_cc)
    for comp in range(1, int(np.max(dilated_cc)) + 1):
        part = np.zeros_like(dilated_cc)
        part[dilated_cc == comp] = 1
        part = gt_cc * part
        np.place(part, part > 0, comp)
        out += part
    return out


def _lesion_scores(pred_file: str, gt_file: str, region: str, dil: int) -> dict:
    pred_nii, gt_nii = nib.load(pred_file), nib.load(gt_file)
    pred, gt = pred_nii.get_fdata(), gt_nii.get_fdata()
    sx, sy, sz = pred_nii.header.get_zooms()
    pred, gt = _region(pred, region), _region(gt, region)

    both_empty = np.all(gt == 0) and np.all(pred == 0)
    full_dice = 1.0 if both_empty else _dice(pred, gt)
    full_hd95 = 0.0 if both_empty else _robust_hd95(gt.astype(int), pred.astype(int), (sx, sy, sz))
    sens, spec = _sens_spec(pred, gt)
    gt_volume = np.sum(gt) * sx * sy * sz

    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc = cc3d.connected_components(gt, connectivity=26)
    pred_cc = cc3d.connected_components(pred, connectivity=26)
    dilated_cc = cc3d.connected_components(ndimage.binary_dilation(gt, structure=struct, iterations=dil),
                                           connectivity=26)
    gt_lab = _merge_by_dilation(dilated_cc, gt_cc)

    tp_components, gt_tp, fn, rows = [], [], [], []
    for comp in range(1, int(np.max(gt_lab)) + 1):
        lesion = np.zeros_like(gt_lab)
        lesion[gt_lab == comp] = 1
        roi = ndimage.binary_dilation(lesion, structure=struct, iterations=dil)
        volume = np.sum(lesion) * sx * sy * sz
        hits = np.unique(np.copy(pred_cc) * roi)
        hits = hits[hits != 0]
        tp_components.extend(hits)
        matched = np.copy(pred_cc)
        matched[np.isin(matched, hits, invert=True)] = 0
        matched[np.isin(matched, hits)] = 1
        rows.append((hits, comp, volume, _dice(matched, lesion), _robust_hd95(lesion, matched, (sx, sy, sz))))
        (gt_tp if len(hits) > 0 else fn).append(comp)
    fp = np.unique(pred_cc[np.isin(pred_cc, tp_components + [0], invert=True)])
    return {"gt_tp": gt_tp, "fn": fn, "fp": fp, "rows": rows, "full_dice": full_dice, "full_hd95": full_hd95,
            "sens": sens, "spec": spec, "gt_volume": gt_volume}


def lesion_wise_results(pred_file: str, gt_file: str, challenge: str) -> dict[str, dict]:
    """``{region: {Num_TP, Num_FP, Num_FN, Sensitivity, Specificity, Legacy_Dice, Legacy_HD95,
    GT_Complete_Volume, LesionWise_Score_Dice, LesionWise_Score_HD95, lesions}}`` for WT, TC, ET;
    ``lesions`` is the script's per-lesion table (inf already replaced by 374)."""
    dil, thr = PARAMETERS[challenge]
    out = {}
    for region in ("WT", "TC", "ET"):
        s = _lesion_scores(pred_file, gt_file, region, dil)
        df = pd.DataFrame(s["rows"], columns=["predicted_lesion_numbers", "gt_lesion_numbers", "gt_lesion_vol",
                                              "dice_lesionwise", "hd95_lesionwise"])
        df = df.sort_values(by=["gt_lesion_numbers"], ascending=True).reset_index(drop=True)
        df["_len"] = df["predicted_lesion_numbers"].map(len)
        fn_sub = df[(df["_len"] == 0) & (df["gt_lesion_vol"] <= thr)].shape[0]
        tp_sub = df[(df["_len"] != 0) & (df["gt_lesion_vol"] <= thr)].shape[0]
        num = ["gt_lesion_vol", "dice_lesionwise", "hd95_lesionwise"]
        df[num] = df[num].replace(np.inf, 374)
        kept = df[df["gt_lesion_vol"] > thr]
        n_fp = len(s["fp"])
        try:
            lw_dice = np.sum(kept["dice_lesionwise"]) / (len(kept) + n_fp)
        except Exception:  # the script catches everything here
            lw_dice = np.nan
        try:
            lw_hd = (np.sum(kept["hd95_lesionwise"]) + n_fp * 374) / (len(kept) + n_fp)
        except Exception:  # the script catches everything here
            lw_hd = np.nan
        if math.isnan(lw_dice):
            lw_dice = 1
        if math.isnan(lw_hd):
            lw_hd = 0
        legacy_hd = 374 if np.isinf(s["full_hd95"]) else s["full_hd95"]
        out[region] = {"Num_TP": len(s["gt_tp"]) - tp_sub, "Num_FP": n_fp, "Num_FN": len(s["fn"]) - fn_sub,
                       "Sensitivity": s["sens"], "Specificity": s["spec"], "Legacy_Dice": s["full_dice"],
                       "Legacy_HD95": legacy_hd, "GT_Complete_Volume": s["gt_volume"],
                       "LesionWise_Score_Dice": lw_dice, "LesionWise_Score_HD95": lw_hd, "lesions": df}
    return out
