"""Metrics on hand-built masks with known answers, parity with MONAI, BraTS empty rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

from attnseg.metrics import (
    BRATS_MAX_HD95,
    LESION_PENALTY,
    assd,
    binary_scores,
    brats_region_scores,
    dice,
    hausdorff,
    hd95,
    jaccard,
    lesion_wise_scores,
    sensitivity,
    specificity,
    surface_distances,
    volume_difference,
)


def cube(shape=(20, 20, 20), lo=(5, 5, 5), size=(6, 6, 6)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, size))] = True
    return m


def test_overlap_of_shifted_cubes_known_values():
    a = cube(size=(4, 4, 4))                 # 64 voxels
    b = cube(lo=(6, 5, 5), size=(4, 4, 4))   # shifted 1 voxel along x: overlap 3*4*4 = 48
    assert dice(a, b) == pytest.approx(2 * 48 / 128)
    assert jaccard(a, b) == pytest.approx(48 / 80)
    assert sensitivity(a, b) == pytest.approx(48 / 64)
    assert specificity(a, b) == pytest.approx((8000 - 80) / (8000 - 64))
    assert volume_difference(a, b) == 0
    assert volume_difference(cube(size=(4, 4, 5)), a, spacing=(1, 2, 3), relative=False) == 16 * 6
    assert volume_difference(cube(size=(4, 4, 5)), a, relative=True) == pytest.approx(16 / 64)


def test_surface_distances_of_shifted_cube():
    a = cube()
    b = cube(lo=(7, 5, 5))  # shift by 2 voxels along x
    # every surface voxel of a with x in {5, 6} is 2 from b's surface, the rest 0 (shared faces)
    assert hausdorff(a, b) == pytest.approx(2.0)
    assert hd95(a, b) == pytest.approx(2.0)
    d_ab, d_ba = surface_distances(a, b)
    assert sorted(set(np.round(d_ab, 6))) == [0.0, 1.0, 2.0]
    # anisotropic spacing scales the shift: 2 voxels * 1.5 mm along x
    assert hausdorff(a, b, spacing=(1.5, 1.0, 0.5)) == pytest.approx(3.0)
    # the same shift along z at 0.5 mm
    c = cube(lo=(5, 5, 7))
    assert hausdorff(a, c, spacing=(1.5, 1.0, 0.5)) == pytest.approx(1.0)


def test_point_masks_have_exact_distances():
    a = np.zeros((10, 10, 10), bool)
    b = a.copy()
    a[1, 2, 3] = True
    b[4, 6, 3] = True  # distance 5 (3-4-5 triangle)
    assert hd95(a, b) == pytest.approx(5.0)
    assert assd(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2, 1, 1)) == pytest.approx(math.hypot(6, 4))


def test_hd95_definitions_differ_as_documented():
    # large cube vs large cube + far small blob: union percentile vs max of directed percentiles
    a = cube((40, 40, 40), (5, 5, 5), (12, 12, 12))
    b = a.copy()
    b[30:34, 30:34, 30:34] = True  # 56 surface voxels: 7% of b's surface, 3.7% of both
    da, db = surface_distances(a, b)
    assert hd95(a, b, method="monai") == pytest.approx(max(np.percentile(da, 95), np.percentile(db, 95)))
    assert hd95(a, b, method="pooled") == pytest.approx(np.percentile(np.concatenate([da, db]), 95))
    assert hd95(a, b, method="monai") != pytest.approx(hd95(a, b, method="pooled"))
    assert assd(a, b, method="mean_of_means") == pytest.approx((da.mean() + db.mean()) / 2)
    assert assd(a, b, method="pooled") == assd(a, b, method="monai") == pytest.approx(np.concatenate([da, db]).mean())
    with pytest.raises(ValueError, match="renamed"):
        hd95(a, b, method="medpy")
    with pytest.raises(ValueError, match="unknown method"):
        hd95(a, b, method="nope")


def _random_blobs(seed: int, shape=(24, 22, 18)) -> np.ndarray:
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (1.2, 0.8, 2.5)])
def test_equals_monai(seed, spacing):
    p, r = _random_blobs(seed), _random_blobs(seed + 10)
    pt = torch.from_numpy(p)[None, None].float()
    rt = torch.from_numpy(r)[None, None].float()
    d_ref = DiceMetric(include_background=True)(pt, rt).item()
    h_ref = HausdorffDistanceMetric(include_background=True, percentile=95)(pt, rt, spacing=spacing).item()
    a_ref = SurfaceDistanceMetric(include_background=True, symmetric=True)(pt, rt, spacing=spacing).item()
    assert dice(p, r) == pytest.approx(d_ref, abs=1e-6)
    assert hd95(p, r, spacing) == pytest.approx(h_ref, rel=1e-6, abs=1e-6)
    assert assd(p, r, spacing) == pytest.approx(a_ref, rel=1e-6, abs=1e-6)
    s = binary_scores(p, r, spacing)
    assert s["hd95"] == pytest.approx(h_ref, rel=1e-6, abs=1e-6) and s["dice"] == pytest.approx(d_ref, abs=1e-6)


def test_2d_masks_equal_monai():
    p, r = cube((30, 30), (3, 4), (10, 12)), cube((30, 30), (6, 2), (9, 15))
    pt, rt = torch.from_numpy(p)[None, None].float(), torch.from_numpy(r)[None, None].float()
    h_ref = HausdorffDistanceMetric(include_background=True, percentile=95)(pt, rt).item()
    assert hd95(p, r) == pytest.approx(h_ref, abs=1e-6)


# ---------------------------------------------------------------- BraTS legacy empty rules
def test_brats_both_empty_gives_dice_1_hd_0():
    e = np.zeros((8, 8, 8), bool)
    s = binary_scores(e, e)
    assert (s["dice"], s["hd95"], s["jaccard"], s["assd"]) == (1.0, 0.0, 1.0, 0.0)
    assert math.isnan(s["sensitivity"])


def test_brats_prediction_on_empty_reference_gives_dice_0_hd_max():
    e = np.zeros((8, 8, 8), bool)
    s = binary_scores(cube((8, 8, 8), (1, 1, 1), (2, 2, 2)), e)
    assert (s["dice"], s["hd95"], s["assd"]) == (0.0, BRATS_MAX_HD95, BRATS_MAX_HD95)


def test_brats_empty_prediction_with_reference_gives_dice_0_hd_max():
    e = np.zeros((8, 8, 8), bool)
    s = binary_scores(e, cube((8, 8, 8), (1, 1, 1), (2, 2, 2)))
    assert (s["dice"], s["hd95"], s["sensitivity"]) == (0.0, BRATS_MAX_HD95, 0.0)


def test_brats_non_empty_distances_are_capped():
    a = np.zeros((400, 3, 3), bool)
    b = a.copy()
    a[0, 1, 1] = True
    b[399, 1, 1] = True
    assert binary_scores(a, b)["hd95"] == BRATS_MAX_HD95
    assert binary_scores(a, b, empty="nan")["hd95"] == pytest.approx(399.0)


def test_nan_mode_keeps_undefined_values():
    e = np.zeros((8, 8, 8), bool)
    s = binary_scores(e, e, empty="nan")
    assert math.isnan(s["dice"]) and math.isnan(s["hd95"])
    s = binary_scores(cube((8, 8, 8), (1, 1, 1), (2, 2, 2)), e, empty="nan")
    assert s["dice"] == 0.0 and math.isinf(s["hd95"])


def test_region_scores_per_region():
    ref = np.stack([cube(size=(2, 2, 2)), cube(size=(4, 4, 4)), cube(size=(6, 6, 6))])
    pred = ref.copy()
    pred[0] = False  # ET missed entirely
    out = brats_region_scores(pred, ref)
    assert list(out) == ["ET", "TC", "WT"]
    assert out["ET"]["dice"] == 0.0 and out["ET"]["hd95"] == BRATS_MAX_HD95
    assert out["TC"]["dice"] == 1.0 and out["WT"]["hd95"] == 0.0
    with pytest.raises(ValueError, match="region stacks"):
        brats_region_scores(pred[:2], ref[:2])


# ---------------------------------------------------------------- lesion-wise (BraTS 2023)
def test_lesion_wise_matching_fp_and_small_lesions():
    # the BraTS 2023 script's rules (parity with a transcription of it: test_brats2023_official.py)
    ref = np.zeros((40, 40, 40), bool)
    ref[2:8, 2:8, 2:8] = True        # lesion A, 216 mm³, predicted exactly
    ref[20:26, 20:26, 20:26] = True  # lesion B, 216 mm³, missed
    ref[35:37, 35:37, 35:37] = True  # 8 mm³: at or under 50 mm³, left out of the scores
    pred = np.zeros_like(ref)
    pred[2:8, 2:8, 2:8] = True
    pred[30:35, 2:7, 2:7] = True     # 125-voxel false positive
    pred[12:13, 30:31, 30:31] = True  # 1-voxel false positive: counted too, whatever its size
    out = lesion_wise_scores(pred, ref)
    assert (out["num_tp"], out["num_fn"], out["num_fp"]) == (1, 1, 2)
    assert out["dice"] == pytest.approx(1.0 / 4)
    assert out["hd95"] == pytest.approx(3 * LESION_PENALTY / 4)
    assert [x["counted"] for x in out["lesions"]] == [True, True, False]
    # with 2 mm voxels (8 mm³ each) the 8-voxel lesion is 64 mm³: counted
    assert len([x for x in lesion_wise_scores(pred, ref, (2.0, 2.0, 2.0))["lesions"] if x["counted"]]) == 3


def test_lesion_wise_merges_close_reference_lesions_and_empty_cases():
    ref = np.zeros((30, 30, 30), bool)
    ref[5:10, 5:10, 5:10] = True
    ref[12:17, 5:10, 5:10] = True   # 2 voxels apart: merged by the dilation into one lesion
    out = lesion_wise_scores(ref, ref)
    assert len(out["lesions"]) == 1 and out["dice"] == 1.0 and out["hd95"] == 0.0
    assert len(lesion_wise_scores(ref, ref, dilation=0)["lesions"]) == 2
    e = np.zeros_like(ref)
    assert lesion_wise_scores(e, e)["dice"] == 1.0
    # predicted components are never merged: two false positives
    out = lesion_wise_scores(ref, e)
    assert (out["dice"], out["hd95"], out["num_fp"], out["lesions"]) == (0.0, LESION_PENALTY, 2, [])


def test_deepmind_without_surface_distance_names_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    import nibabel as nib

    from attnseg.cli.main import main
    from attnseg.metrics import core

    for name in ("surface_distance", "surface_distance.lookup_tables"):  # as if the package were not installed
        monkeypatch.setitem(sys.modules, name, None)
    core._deepmind_tables.cache_clear()
    a = cube()
    with pytest.raises(ImportError, match=r"attnseg\[brats2023\]"):
        hd95(a, cube(lo=(6, 5, 5)), method="deepmind")
    for d in ("p", "r"):
        (tmp_path / d).mkdir()
        nib.save(nib.Nifti1Image(a.astype(np.uint8) * 3, np.eye(4)), tmp_path / d / "c.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r"), "--out",
                 str(tmp_path / "ev"), "--challenge", "GLI"]) == 1
    err = capsys.readouterr().err.strip()
    assert "attnseg[brats2023]" in err and len(err.splitlines()) == 1
    core._deepmind_tables.cache_clear()


def test_fortran_ordered_and_transposed_masks_give_the_same_distances():
    # nibabel arrays are Fortran-ordered; transposed views too: the surface look-ups must not care
    p, r = _random_blobs(4), _random_blobs(5)
    for conv in (np.asfortranarray, lambda x: x.T.copy().T, lambda x: x[:, ::-1][:, ::-1]):
        assert hd95(conv(p), conv(r), (1.2, 0.8, 2.5)) == hd95(p, r, (1.2, 0.8, 2.5))
        assert assd(conv(p), conv(r)) == assd(p, r)
    p2, r2 = p[:, :, 5], r[:, :, 5]
    assert hd95(p2.T, r2.T) == hd95(np.ascontiguousarray(p2.T), np.ascontiguousarray(r2.T))
