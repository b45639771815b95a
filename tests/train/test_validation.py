"""Validation scores during training: the Dice/HD95 of :mod:`attnseg.metrics` with the BraTS
empty-region rules, per region or class, on hand-made cases."""

import math

import numpy as np
import pytest
import torch

from attnseg.metrics import binary_scores, dice, hd95
from attnseg.train.validation import class_key, validation_scores


def test_validation_scores_regions_and_classes_by_hand():
    label = np.zeros((4, 4), np.int64)
    label[0, :2] = 3  # ET (⊂ TC ⊂ WT)
    label[1, :2] = 2  # ED (WT only)
    logits = torch.full((1, 4, 4, 4), -5.0)
    logits[0, 1, 0, 0] = 5.0  # ET predicted on 1 of 2 voxels
    logits[0, 3, :2, :2] = 5.0  # WT exact
    s = validation_scores(logits, label, "brats-regions", activated=None)
    assert s["dice_ET"] == pytest.approx(2 * 1 / 3) and s["dice_WT"] == 1.0
    assert s["dice_TC"] == pytest.approx(0.0)  # TC predicted empty, reference has 2 voxels
    h = validation_scores(logits, label, "brats-regions", activated=None, hd95=True)
    assert (h["hd95_WT"], h["hd95_TC"]) == (0.0, 373.13)  # exact; empty prediction → BraTS 373.13
    # directed distances ref→pred (0, 1) and pred→ref (0): 95th percentile, linear interpolation → 0.95
    assert h["hd95_ET"] == pytest.approx(0.95)
    empty = validation_scores(torch.full((1, 4, 4, 4), -5.0), np.zeros((4, 4), np.int64), "brats-regions", None)
    assert empty == {"dice_ET": 1.0, "dice_TC": 1.0, "dice_WT": 1.0}  # both empty → 1 (BraTS rule)
    probs = torch.zeros(1, 3, 4, 4)
    probs[0, 0] = 1.0
    probs[0, 2, 0, :2] = 2.0  # class 2 on the two ET voxels of `label` → classes view: label 3 absent
    cls = validation_scores(probs, np.where(label == 3, 2, 0), "classes", activated="softmax")
    assert cls == {"dice_1": 1.0, "dice_2": 1.0}


def test_validation_scores_equal_the_metrics_package_on_an_anisotropic_3d_case():
    label = np.zeros((6, 8, 8), np.int64)
    label[2:4, 2:6, 2:6] = 2  # edema: WT only
    label[2:4, 3:5, 3:5] = 3  # ET (⊂ TC ⊂ WT)
    logits = torch.full((1, 3, 6, 8, 8), -5.0)  # channels ET, TC, WT
    logits[0, 0, 2:4, 3:5, 4:6] = 5.0  # ET shifted by one voxel along x
    logits[0, 2, 1:4, 2:6, 2:7] = 5.0  # WT one slice and one column too many
    spacing = (3.0, 1.0, 0.5)  # mm, per spatial axis
    s = validation_scores(logits, label, "brats-regions", activated=None, hd95=True, spacing=spacing)
    et_p, et_r = logits[0, 0].numpy() > 0, label == 3
    wt_p, wt_r = logits[0, 2].numpy() > 0, label > 0
    # ET: 4 of 8 voxels overlap; WT: the 32-voxel reference inside a 60-voxel prediction
    assert s["dice_ET"] == dice(et_p, et_r) == pytest.approx(2 * 4 / 16)
    assert s["dice_WT"] == dice(wt_p, wt_r) == pytest.approx(2 * 32 / 92)
    assert s["hd95_ET"] == hd95(et_p, et_r, spacing) and s["hd95_WT"] == hd95(wt_p, wt_r, spacing)
    assert s["hd95_ET"] == pytest.approx(0.5)  # the shifted surface: one voxel of 0.5 mm
    assert s["hd95_WT"] == pytest.approx(math.hypot(3.0, 0.5))  # the extra slice and column: 3 mm, 0.5 mm
    # TC (labels 1, 3) is predicted empty: the BraTS rules, as binary_scores applies them
    assert (s["dice_TC"], s["hd95_TC"]) == (0.0, 373.13)
    tc = binary_scores(np.zeros_like(et_r), et_r, spacing)
    assert (s["dice_TC"], s["hd95_TC"]) == (tc["dice"], tc["hd95"])
    assert list(s) == ["dice_ET", "hd95_ET", "dice_TC", "hd95_TC", "dice_WT", "hd95_WT"]
    # a sigmoid output is thresholded at 0.5 instead of 0 and gives the same scores
    assert validation_scores(torch.sigmoid(logits), label, "brats-regions", "sigmoid", True, spacing) == s


def test_class_columns_use_label_names():
    assert class_key(1, {"1": "left ventricle", 2: "myo"}) == "left_ventricle"
    assert class_key(2, {"1": "left ventricle", 2: "myo"}) == "myo" and class_key(3, None) == "3"
    probs = torch.zeros(1, 3, 4, 4)
    probs[0, 0] = 1.0
    probs[0, 1, :2] = 2.0
    label = np.zeros((4, 4), np.int64)
    label[:1] = 1
    s = validation_scores(probs, label, "classes", "softmax", label_names={1: "left ventricle", 2: "myo"})
    assert s == {"dice_left_ventricle": pytest.approx(2 * 4 / 12), "dice_myo": 1.0}  # myo: both empty
