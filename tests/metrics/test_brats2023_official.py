"""attnseg's BraTS 2023 lesion-wise scores against a transcription of the official script
(tests/metrics/brats2023_oracle.py) on designed cases: merged lesions, lesions at the volume
threshold, anisotropic voxels, diagonal neighbours, tiny false positives, empty masks, every
sub-challenge. Counts and Dice must be exactly equal, HD95 too (both use DeepMind's definition)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cc3d", reason="test dependency connected-components-3d (pip install -e '.[dev]')")
pytest.importorskip("surface_distance", reason="test dependency surface-distance (pip install -e '.[dev]')")

import nibabel as nib  # noqa: E402
from brats2023_oracle import lesion_wise_results  # noqa: E402

from attnseg.cli.main import main  # noqa: E402
from attnseg.metrics import CHALLENGES, hd95, lesion_wise_scores  # noqa: E402
from attnseg.metrics.evaluate import evaluate_folders  # noqa: E402

SHAPE = (36, 32, 24)


def box(lab: np.ndarray, lo, size, value: int) -> None:
    lab[tuple(slice(a, a + s) for a, s in zip(lo, size))] = value


def tumour(lab: np.ndarray, lo, size) -> None:
    """Nested label blob: oedema 2 around necrosis 1 around enhancing 3."""
    box(lab, lo, size, 2)
    box(lab, [a + 1 for a in lo], [s - 2 for s in size], 1)
    box(lab, [a + 2 for a in lo], [s - 4 for s in size], 3)


def case_merged():
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    box(ref, (4, 4, 4), (4, 4, 4), 3)
    box(ref, (11, 4, 4), (4, 4, 4), 3)      # 3 voxels apart: one lesion at dilation 3, two at 1
    box(ref, (4, 20, 4), (4, 4, 4), 1)
    box(ref, (4, 20, 13), (5, 4, 4), 1)     # 5 apart: never merged
    box(pred, (4, 4, 4), (4, 4, 3), 3)      # finds the first ET blob only
    box(pred, (5, 20, 4), (4, 4, 4), 1)
    box(pred, (4, 21, 13), (5, 4, 4), 2)
    return pred, ref


def case_threshold():
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    box(ref, (2, 2, 2), (5, 5, 2), 3)       # 50 voxels: volume 50 at 1 mm, not counted (<= 50)
    box(ref, (2, 12, 2), (5, 5, 2), 3)
    ref[2, 17, 2] = 3                        # 51 voxels: counted
    box(ref, (20, 2, 2), (1, 1, 2), 3)      # 2 voxels: MET threshold 2 → not counted
    box(ref, (20, 12, 2), (1, 1, 3), 3)     # 3 voxels: counted for MET
    box(ref, (28, 20, 12), (5, 5, 2), 1)    # missed 50-voxel lesion: not a false negative
    box(pred, (2, 2, 2), (5, 5, 2), 3)
    box(pred, (20, 12, 2), (1, 1, 2), 3)
    return pred, ref


def case_threshold_aniso():
    # at 1 × 1 × 2 mm: 25 voxels = 50 mm³ (left out), 26 voxels = 52 mm³ (counted); MET: 1 voxel = 2 mm³
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    box(ref, (2, 2, 2), (5, 5, 1), 3)
    box(ref, (2, 12, 2), (5, 5, 1), 3)
    ref[2, 17, 2] = 3
    ref[20, 2, 2] = 3
    box(ref, (20, 12, 2), (1, 2, 1), 3)
    box(pred, (2, 12, 2), (5, 4, 1), 3)
    pred[20, 2, 2] = 3
    return pred, ref


def case_diagonal():
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    for i in range(8):                       # voxels touching by corners only: one 26-connected lesion
        ref[4 + i, 4 + i, 4 + i % 4] = 3
    # cubes whose corners are (6, 6, 6) apart: 3 dilations with the 3×3×3 cube would merge them,
    # the script's 18-neighbourhood keeps them apart (GLI, SSA, PED)
    box(ref, (2, 16, 2), (4, 4, 4), 1)
    box(ref, (11, 25, 11), (4, 4, 4), 1)
    # corners (3, 3, 3) apart: the same for one dilation (MEN, MET)
    box(ref, (20, 2, 14), (4, 4, 4), 1)
    box(ref, (26, 8, 20), (4, 4, 4), 1)
    for i in range(6):
        pred[5 + i, 4 + i, 4 + i % 3] = 3
    pred[20, 20, 20] = 3                     # two single voxels, corner to corner: one component
    pred[21, 21, 21] = 3
    box(pred, (2, 16, 2), (4, 4, 4), 1)
    pred[19, 1, 13] = 1                      # touches a reference cube's corner only: a false positive
                                             # for one 18-neighbourhood dilation, a match for three
    return pred, ref


def case_tiny_fp():
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    tumour(ref, (8, 8, 6), (10, 10, 8))
    tumour(pred, (9, 8, 6), (10, 9, 8))
    for p in [(1, 1, 1), (30, 2, 20), (2, 29, 3), (34, 30, 22), (20, 28, 1)]:
        pred[p] = 3                          # 1-voxel false positives far from the tumour
    return pred, ref


def case_empty_ref():
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    pred[17, 15, 11] = 3                     # one voxel on an empty reference: Dice 0, HD95 374
    return pred, ref


def case_empty_pred():
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    tumour(ref, (8, 8, 6), (9, 9, 7))
    box(ref, (28, 2, 2), (1, 1, 1), 2)       # a 1-voxel oedema lesion: not counted
    return pred, ref


def case_random(seed: int):
    rng = np.random.default_rng(seed)
    ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    for _ in range(4):
        lo = rng.integers(0, [s - 9 for s in SHAPE])
        size = rng.integers(5, 10, 3)
        tumour(ref, lo, size)
        if rng.random() < 0.75:
            tumour(pred, lo + rng.integers(-1, 2, 3), size + rng.integers(-1, 2, 3))
    for _ in range(int(rng.integers(0, 6))):
        p = tuple(int(rng.integers(0, s)) for s in SHAPE)
        pred[p] = int(rng.integers(1, 4))
    return pred, ref


CASES = {"merged": case_merged, "threshold": case_threshold, "threshold_aniso": case_threshold_aniso,
         "diagonal": case_diagonal, "tiny_fp": case_tiny_fp,
         "empty_ref": case_empty_ref, "empty_pred": case_empty_pred, "random0": lambda: case_random(0),
         "random1": lambda: case_random(1)}
ZOOMS = {"iso": (1.0, 1.0, 1.0), "aniso": (1.0, 1.0, 2.0), "odd": (1.2, 0.7, 3.3), "fine": (0.9375, 0.9375, 1.5)}
# the threshold cases sit exactly at the volume thresholds with these voxel sizes; the others
# rotate through ZOOMS with the challenge
FIXED_ZOOMS = {"threshold": ZOOMS["iso"], "threshold_aniso": ZOOMS["aniso"]}


def write_case(tmp_path, name: str, pred: np.ndarray, ref: np.ndarray, zooms) -> tuple:
    aff = np.diag([*zooms, 1.0])
    (tmp_path / "pred").mkdir(exist_ok=True)
    (tmp_path / "ref").mkdir(exist_ok=True)
    pp, rp = tmp_path / "pred" / f"{name}.nii.gz", tmp_path / "ref" / f"{name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(pred.astype(np.uint8), aff), pp)
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), aff), rp)
    return str(pp), str(rp)


def assert_same(row: dict, off: dict) -> None:
    where = row["region"]
    assert (row["num_tp"], row["num_fp"], row["num_fn"]) == (off["Num_TP"], off["Num_FP"], off["Num_FN"]), where
    assert row["lesion_dice"] == off["LesionWise_Score_Dice"], where
    assert row["lesion_hd95"] == off["LesionWise_Score_HD95"], where
    assert row["legacy_dice"] == off["Legacy_Dice"], where
    assert row["legacy_hd95"] == off["Legacy_HD95"], where
    assert (row["legacy_sensitivity"], row["legacy_specificity"]) == (off["Sensitivity"], off["Specificity"]), where


@pytest.mark.parametrize("challenge", ["GLI", "SSA", "MEN", "PED", "MET"])
def test_every_case_every_challenge_equals_the_official_script(tmp_path, challenge):
    zoom_names = list(ZOOMS)
    for i, (name, make) in enumerate(CASES.items()):
        pred, ref = make()
        zooms = FIXED_ZOOMS.get(name, ZOOMS[zoom_names[(i + list(CHALLENGES).index(challenge)) % len(zoom_names)]])
        write_case(tmp_path, name, pred, ref, zooms)
    rows, info = evaluate_folders(tmp_path / "pred", tmp_path / "ref", lesion_wise=True, challenge=challenge)
    assert info["cases"] == len(CASES)
    for name in CASES:
        off = lesion_wise_results(str(tmp_path / "pred" / f"{name}.nii.gz"),
                                  str(tmp_path / "ref" / f"{name}_seg.nii.gz"), f"BraTS-{challenge}")
        for row in (r for r in rows if r["case_id"] == name):
            assert_same(row, off[row["region"]])


@pytest.mark.parametrize("zoom", list(ZOOMS))
def test_anisotropic_voxels_and_per_lesion_table(tmp_path, zoom):
    pred, ref = case_random(7)
    pp, rp = write_case(tmp_path, "c", pred, ref, ZOOMS[zoom])
    off = lesion_wise_results(pp, rp, "BraTS-GLI")
    zooms = tuple(float(z) for z in nib.load(pp).header.get_zooms())
    for region, values in (("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,))):
        out = lesion_wise_scores(np.isin(pred, values), np.isin(ref, values), zooms, "GLI")
        table = off[region]["lesions"]
        assert [x["lesion"] for x in out["lesions"]] == table["gt_lesion_numbers"].tolist()
        assert [x["volume"] for x in out["lesions"]] == table["gt_lesion_vol"].tolist()
        assert [x["dice"] for x in out["lesions"]] == table["dice_lesionwise"].tolist()
        assert [x["hd95"] for x in out["lesions"]] == table["hd95_lesionwise"].tolist()
        assert [len(x["matched"]) for x in out["lesions"]] == table["_len"].tolist()
        assert out["gt_volume"] == off[region]["GT_Complete_Volume"]
        assert out["sensitivity"] == off[region]["Sensitivity"]
        assert out["specificity"] == off[region]["Specificity"]


def test_known_values_of_the_issue_cases():
    # a 1-voxel false positive on an empty reference: Dice 0 and HD95 374 (not "both empty")
    e = np.zeros(SHAPE, bool)
    fp = e.copy()
    fp[3, 3, 3] = True
    out = lesion_wise_scores(fp, e)
    assert (out["dice"], out["hd95"], out["num_fp"], out["legacy_hd95"]) == (0.0, 374.0, 1, 374.0)
    assert lesion_wise_scores(e, e)["dice"] == 1.0 and lesion_wise_scores(e, e)["hd95"] == 0.0
    # merging depends on the challenge: 3 voxels apart → one lesion for GLI, two for MEN
    pred, ref = case_merged()
    gli, men = lesion_wise_scores(pred == 3, ref == 3, challenge="GLI"), lesion_wise_scores(pred == 3, ref == 3,
                                                                                            challenge="MEN")
    assert (len(gli["lesions"]), len(men["lesions"])) == (1, 2)
    assert (men["num_tp"], men["num_fn"]) == (1, 1)
    assert CHALLENGES["MET"] == (1, 2.0)
    with pytest.raises(ValueError, match="unknown BraTS challenge"):
        lesion_wise_scores(pred, ref, challenge="XYZ")


def test_deepmind_hd95_equals_surface_distance_package():
    import surface_distance

    rng = np.random.default_rng(3)
    from scipy import ndimage

    for t, sp in enumerate([(1.0, 1.0, 1.0), (0.5, 1.25, 2.5), (1.2, 0.7, 3.3)]):
        a = ndimage.binary_opening(rng.random((18, 15, 12)) > 0.5)
        b = ndimage.binary_dilation(a) ^ (rng.random(a.shape) > 0.95)
        sd = surface_distance.compute_surface_distances(a, b, sp)
        assert hd95(b, a, sp, method="deepmind") == surface_distance.compute_robust_hausdorff(sd, 95)
        a2, b2 = a[:, :, t], b[:, :, t]      # 2-D: contour lengths instead of areas
        sd2 = surface_distance.compute_surface_distances(a2, b2, sp[:2])
        assert hd95(b2, a2, sp[:2], method="deepmind") == surface_distance.compute_robust_hausdorff(sd2, 95)


def test_cli_lesion_wise_challenge_writes_the_official_columns(tmp_path, capsys):
    pred, ref = case_merged()
    write_case(tmp_path, "c", pred, ref, (1.0, 1.0, 1.0))
    out = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out),
                 "--lesion-wise", "--challenge", "MEN"]) == 0
    import csv

    rows = {r["region"]: r for r in csv.DictReader(open(out / "per_case.csv"))}
    off = lesion_wise_results(str(tmp_path / "pred" / "c.nii.gz"), str(tmp_path / "ref" / "c_seg.nii.gz"),
                              "BraTS-MEN")
    for region in ("ET", "TC", "WT"):
        assert int(rows[region]["num_fn"]) == off[region]["Num_FN"]
        assert float(rows[region]["lesion_dice"]) == pytest.approx(off[region]["LesionWise_Score_Dice"], abs=1e-6)
    printed = capsys.readouterr().out
    assert "lesion_dice" in printed and "lesions.csv" in printed
    lesions = list(csv.DictReader(open(out / "lesions.csv")))
    assert {(r["region"], r["lesion"]) for r in lesions} >= {("ET", "1"), ("ET", "2")}
