"""attnseg plan: fingerprint values, nnU-Net's planning rules, CT normalisation; MSD and plain-folder readers."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from attnseg.data.plan import (  # noqa: E402
    estimate_training_bytes,
    fingerprint_dataset,
    plan_from_fingerprint,
    unet_levels,
)
from attnseg.data.preprocess import zscore  # noqa: E402
from attnseg.data.readers import find_cases, label_names_from_json, load_case  # noqa: E402
from helpers.datasets import make_msd, make_nnunet, tiny_case


def _fp(spacings, shapes, channels=("T2",), modalities=("MR",), rel=0.5) -> dict:
    """A hand-made fingerprint (no files) for the planning rules."""
    return {"root": "/data/X", "layout": "nnunet", "n_cases": len(spacings), "label_convention": "plain",
            "channels": list(channels), "modalities": list(modalities), "modality_reasons": ["test"] * len(channels),
            "cases": [{"case_id": f"c{i}", "shape": list(sh), "cropped_shape": list(sh), "spacing": list(sp)}
                      for i, (sp, sh) in enumerate(zip(spacings, shapes))],
            "relative_size_after_crop": rel,
            "intensity": [{"mean": 50.0, "std": 20.0, "median": 48.0, "p00_5": -100.0, "p99_5": 200.0,
                           "min": -1000.0, "max": 900.0} for _ in channels],
            "labels": {1: "organ", 2: "tumour"}, "class_fraction": {1: 0.9, 2: 0.1},
            "lesions": {1: {"components_per_case": 1, "median_volume_mm3": 1e4},
                        2: {"components_per_case": 2, "median_volume_mm3": 500}}}


def test_fingerprint_of_the_tiny_dataset(tmp_path):
    fp = fingerprint_dataset(make_nnunet(tmp_path, n_train=3, n_test=0))
    assert fp["layout"] == "nnunet" and fp["n_cases"] == 3 and fp["channels"] == ["T2", "ADC"]
    assert fp["modalities"] == ["MR", "MR"] and fp["labels"] == {1: "oedema", 2: "core"}
    # an 8³ oedema cube holding a 4³ core: 448 and 64 voxels of 1 mm³, one component each
    assert fp["class_fraction"] == pytest.approx({1: 448 / 512, 2: 64 / 512})
    assert fp["lesions"][1] == {"components_per_case": 1.0, "median_volume_mm3": 448.0}
    assert fp["lesions"][2]["median_volume_mm3"] == 64.0
    assert all(c["cropped_shape"] == [14, 14, 14] for c in fp["cases"])  # zero border of 1 voxel cropped
    img, lab = tiny_case(0)
    assert fp["intensity"][0]["max"] <= float(img[0][lab > 0].max()) + 30  # foreground statistics


def test_anisotropic_axis_takes_the_10th_percentile_spacing():
    sp = [(0.8, 0.8, z) for z in (2.5, 3.0, 4.0, 5.0, 5.0, 5.0, 6.0)]
    shapes = [(256, 256, 40)] * len(sp)
    plan = plan_from_fingerprint(_fp(sp, shapes), memory_gb=8, precision="mixed")
    target = plan["config"]["data"]["preprocess"]["target_spacing"]
    assert target[:2] == [0.8, 0.8]
    assert target[2] == pytest.approx(float(np.percentile([z for *_, z in sp], 10)))
    # not anisotropic in voxels (enough slices): the median is kept
    plan = plan_from_fingerprint(_fp(sp, [(64, 64, 200)] * len(sp)), memory_gb=8, precision="mixed")
    assert plan["config"]["data"]["preprocess"]["target_spacing"][2] == 5.0


def test_patch_fits_the_budget_and_shrinks_with_it():
    fp = _fp([(1.0, 1.0, 1.0)] * 5, [(160, 160, 160)] * 5)
    sizes = []
    for gb in (16, 4, 1):
        cfg = plan_from_fingerprint(fp, memory_gb=gb, precision="fp32")["config"]
        patch, feats = cfg["data"]["patch_size"], cfg["model"]["kwargs"]["features"]
        assert estimate_training_bytes(patch, 1, 3, 2, feats, 4) <= gb * 2**30
        assert all(p % 2 ** (len(feats) - 1) == 0 for p in patch) and len(feats) == unet_levels(patch)
        assert cfg["data"]["batch_size"] >= 2
        sizes.append(int(np.prod(patch)))
    assert sizes[0] > sizes[1] > sizes[2]
    big = plan_from_fingerprint(fp, memory_gb=500, precision="fp32")["config"]["data"]["patch_size"]
    assert big == [160, 160, 160]  # never larger than the median shape


def test_ct_channels_are_clipped_and_scaled_with_dataset_statistics():
    cfg = plan_from_fingerprint(_fp([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3, ("CT", "PET"), ("CT", "MR")),
                                memory_gb=8)["config"]
    pre = cfg["data"]["preprocess"]
    assert pre["normalize"] == ["ct", "zscore"] and pre["extra"]["ct"]["0"] == {"lo": -100.0, "hi": 200.0,
                                                                                 "mean": 50.0, "std": 20.0}
    img = np.array([[[-1000.0, 0.0, 50.0, 500.0]], [[0.0, 1.0, 2.0, 3.0]]], np.float32)
    out = zscore(img.copy(), pre["normalize"], pre["extra"]["ct"])
    np.testing.assert_allclose(out[0, 0], [(-100 - 50) / 20, -2.5, 0.0, (200 - 50) / 20])
    vals = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(out[1, 0, 1:], (vals - vals.mean()) / vals.std(), rtol=1e-6)
    assert out[1, 0, 0] == 0.0  # background stays 0 with zscore


def test_task_kind_from_the_data():
    fp = _fp([(1.0, 1.0, 1.0)] * 2, [(32, 32, 32)] * 2)
    assert plan_from_fingerprint(fp, memory_gb=1)["config"]["task"]["kind"] == "classes"
    fp.update(layout="brats", label_convention="brats2020")
    assert plan_from_fingerprint(fp, memory_gb=1)["config"]["task"]["kind"] == "brats-regions"


def test_msd_reader_splits_4d_images_and_skips_hidden_files(tmp_path):
    ds = make_msd(tmp_path, n_train=2, n_test=1)
    (ds / "imagesTr" / "._tiny_000.nii.gz").write_bytes(b"\x00\x05junk")  # macOS resource fork
    cases = find_cases(ds)
    assert [c.case_id for c in cases] == ["tiny_000", "tiny_001"] and cases[0].layout == "msd"
    d = load_case(cases[0])
    img, lab = tiny_case(0)
    np.testing.assert_array_equal(d["image"], img)
    np.testing.assert_array_equal(d["label"], lab)
    assert cases[0].extra["label_names"] == {1: "oedema", 2: "core"}
    only_adc = find_cases(ds, channels=["ADC"])
    np.testing.assert_array_equal(load_case(only_adc[0])["image"], img[1:])
    assert [c.case_id for c in find_cases(ds / "imagesTs", require_labels=False)] == ["tiny_002"]


def test_plain_folder_groups_channel_files(tmp_path):
    ds = make_nnunet(tmp_path, n_train=1, n_test=2)
    cases = find_cases(ds / "imagesTs", layout="images", require_labels=False)
    assert [(c.case_id, len(c.image_paths)) for c in cases] == [("case001", 2), ("case002", 2)]
    single = tmp_path / "single"
    single.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(single / "a.nii.gz"))
    assert [c.case_id for c in find_cases(single, require_labels=False)] == ["a"]


def test_label_names_from_both_dataset_json_versions():
    assert label_names_from_json({"0": "background", "1": "edema", "2": "tumour"}) == {1: "edema", 2: "tumour"}
    assert label_names_from_json({"background": 0, "edema": 1, "whole": [1, 2]}) == {1: "edema"}
