"""attnseg evaluate: case matching, BraTS regions, spacing, outputs."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from attnseg.cli.main import main
from attnseg.metrics import BRATS_MAX_HD95
from attnseg.metrics.evaluate import evaluate_case, find_pairs, summarize


def _save(path, arr, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag([*spacing, 1.0])), path)


def _brats_label(shift=0):
    lab = np.zeros((20, 20, 12), np.uint8)
    lab[4 + shift:16 + shift, 4:16, 2:10] = 2   # oedema
    lab[6 + shift:14 + shift, 6:14, 3:9] = 1    # necrosis
    lab[8 + shift:12 + shift, 8:12, 4:8] = 4    # enhancing
    return lab


def test_brats_regions_case_values():
    ref = _brats_label()
    rows = evaluate_case(ref, ref)
    assert [r["region"] for r in rows] == ["ET", "TC", "WT"]
    assert all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in rows)
    pred = ref.copy()
    pred[pred == 4] = 1  # ET missed (relabelled necrosis): TC and WT unchanged
    rows = {r["region"]: r for r in evaluate_case(pred, ref)}
    assert rows["ET"]["dice"] == 0.0 and rows["ET"]["hd95"] == BRATS_MAX_HD95
    assert rows["TC"]["dice"] == 1.0 and rows["WT"]["dice"] == 1.0
    # BraTS 2023 convention (ET = 3) is detected from the values
    r23 = evaluate_case(np.where(ref == 4, 3, ref), np.where(ref == 4, 3, ref))
    assert all(r["dice"] == 1.0 for r in r23)
    with pytest.raises(ValueError, match="both 3 and 4"):
        evaluate_case(np.where(ref == 4, 3, ref), ref)


def test_labels_mode_and_spacing():
    ref = np.zeros((10, 10, 10), np.int16)
    ref[2:5, 2:5, 2:5] = 1
    ref[6:9, 6:9, 6:9] = 7
    pred = np.roll(ref, 1, axis=2)
    rows = {r["region"]: r for r in evaluate_case(pred, ref, regions="labels")}
    assert set(rows) == {"1", "7"} and rows["1"]["dice"] == pytest.approx(2 * 18 / 54)
    mm = {r["region"]: r for r in evaluate_case(pred, ref, regions="labels", spacing=(1, 1, 3))}
    assert mm["1"]["hd95"] == pytest.approx(3 * rows["1"]["hd95"])


def test_cli_brats_folder_reference(tmp_path):
    ref_root = tmp_path / "BraTS"
    pred_root = tmp_path / "pred"
    for cid, shift in (("C1", 0), ("C2", 1)):
        _save(ref_root / cid / f"{cid}_seg.nii.gz", _brats_label(), spacing=(1, 1, 2))
        _save(ref_root / cid / f"{cid}_flair.nii.gz", np.ones((20, 20, 12)))
        _save(pred_root / f"{cid}.nii.gz", _brats_label(shift), spacing=(1, 1, 2))
    _save(pred_root / "C1_probs.nii.gz", np.zeros((20, 20, 12)))  # ignored
    _save(pred_root / "C9.nii.gz", _brats_label())                 # no reference: reported
    pairs, no_ref, no_pred = find_pairs(pred_root, ref_root)
    assert [p[0] for p in pairs] == ["C1", "C2"] and no_ref == ["C9"] and no_pred == []
    out = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(pred_root), "--ref", str(ref_root), "--out", str(out),
                 "--spacing-aware", "--lesion-wise"]) == 0
    with open(out / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["case_id"] for r in rows} == {"C1", "C2"}
    c2wt = next(r for r in rows if r["case_id"] == "C2" and r["region"] == "WT")
    assert float(c2wt["dice"]) == pytest.approx(2 * 11 * 12 * 8 / (2 * 12 * 12 * 8))
    assert float(c2wt["hd95"]) == pytest.approx(1.0)  # one-voxel shift along x at 1 mm
    summary = json.loads((out / "summary.json").read_text())
    s = summary["summary"]["WT"]["dice"]
    assert s["n"] == 2 and s["mean"] == pytest.approx((1 + float(c2wt["dice"])) / 2)
    assert {"mean", "std", "median", "q1", "q3"} <= set(s)
    assert summary["info"]["distance_units"] == "mm" and summary["info"]["predictions_without_reference"] == ["C9"]
    md = (out / "summary.md").read_text()
    assert "| WT |" in md and "hd95 (mm)" in md


def test_summary_mean_region_and_nan_skipping():
    rows = [{"case_id": "a", "region": "ET", "dice": 0.5, "hd95": 2.0},
            {"case_id": "a", "region": "TC", "dice": float("nan"), "hd95": 4.0},
            {"case_id": "b", "region": "ET", "dice": 1.0, "hd95": 0.0},
            {"case_id": "b", "region": "TC", "dice": 0.0, "hd95": 6.0}]
    s = summarize(rows)
    assert s["TC"]["dice"]["n"] == 1 and s["ET"]["dice"]["mean"] == pytest.approx(0.75)
    assert s["mean"]["dice"]["mean"] == pytest.approx((0.5 + 0.5) / 2)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "nope")]) == 1
    assert "reference folder not found" in capsys.readouterr().err
