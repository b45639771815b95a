import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from attnseg.data import DataError
from attnseg.data.io import load_image, save_image
from attnseg.data.readers import detect_layout, find_cases, load_case, validate_cases
from helpers.nifti import affine_for, label_volume, make_brats, make_manifest, make_nnunet, make_paired, write


def channel_means(image: np.ndarray) -> list[int]:
    return [int(round(float(ch[ch != 0].mean()) / 100)) for ch in image]


def test_brats2020_cases_channel_order_and_affine(brats2020):
    assert detect_layout(brats2020) == "brats"
    cases = find_cases(brats2020)
    assert [c.case_id for c in cases] == ["BraTS2020_000", "BraTS2020_001", "BraTS2020_002"]
    c = cases[1]
    assert c.label_convention == "brats2020" and c.layout == "brats"
    assert [p.name for p in c.image_paths] == [f"BraTS2020_001_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    d = load_case(c)
    assert d["image"].shape == (4, 32, 32, 32) and d["image"].dtype == np.float32
    assert channel_means(d["image"]) == [1, 2, 3, 4]  # file content of t1, t1ce, t2, flair in that order
    np.testing.assert_allclose(d["affine"], affine_for(1))
    assert d["spacing"] == pytest.approx((1.0, 1.2, 1.5))
    np.testing.assert_array_equal(d["label"], label_volume(1))
    assert isinstance(d["header"], nib.Nifti1Header)
    # configurable channel order
    c2 = find_cases(brats2020, channels=["flair", "t1"])[1]
    assert channel_means(load_case(c2)["image"]) == [4, 1]


def test_brats2023_layout_and_convention(brats2023):
    cases = find_cases(brats2023, layout="brats")
    assert len(cases) == 2 and all(c.label_convention == "brats2023" for c in cases)
    # 2023 names t1n, t1c, t2w, t2f map onto the default t1, t1ce, t2, flair order
    assert [p.name.split("-")[-1] for p in cases[0].image_paths] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz",
                                                                     "t2f.nii.gz"]
    d = load_case(cases[0])
    assert channel_means(d["image"]) == [1, 2, 3, 4]
    assert set(np.unique(d["label"])) == {0, 1, 2, 3}
    # 2023 channel names are accepted for the order too
    assert channel_means(load_case(find_cases(brats2023, channels=["t2f", "t1c"])[0])["image"]) == [4, 2]


def test_nnunet_layout(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Test")
    assert detect_layout(root) == "nnunet"
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["case_000", "case_001", "case_002"]
    assert cases[0].channels == ["T2", "ADC"] and cases[0].extra["labels"] == [0, 1, 2]
    assert channel_means(load_case(cases[0])["image"]) == [1, 2]
    assert channel_means(load_case(find_cases(root, channels=["ADC", "T2"])[0])["image"]) == [2, 1]


@pytest.mark.parametrize("layout", ["malc", "hvsmr"])
def test_paired_layout_pairs_by_case_id(tmp_path, layout):
    root = make_paired(tmp_path / layout, 3, phase="train")
    cases = find_cases(root, layout=layout)
    assert detect_layout(root) == "malc"
    for c in cases:
        assert c.label_path.name == f"{c.case_id}_glm.nii.gz"
        assert c.image_paths[0].name == f"{c.case_id}.nii.gz"
    # the label content matches the image it is paired with (seeded by position in the writer)
    ids = [f"{1000 + 7 * (3 - i)}_3" for i in range(3)]
    for i, cid in enumerate(ids):
        c = next(c for c in cases if c.case_id == cid)
        np.testing.assert_array_equal(load_case(c)["label"], label_volume(i, (0, 1, 2, 3)))
    # phase folder can also be the root itself
    assert len(find_cases(root / "train", layout="malc")) == 3


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_manifest_folder_layout(tmp_path, kind):
    manifest = make_manifest(tmp_path / "f", 3, kind)
    assert detect_layout(manifest.parent) == "folder"
    cases = find_cases(manifest)
    assert [c.case_id for c in cases] == ["subj0", "subj1", "subj2"]
    d = load_case(cases[2])
    assert channel_means(d["image"]) == [1, 2]
    if kind == "json":
        assert cases[0].channels == ["a", "b"] and cases[0].extra["labels"] == [0, 1, 2, 3]


def test_simpleitk_formats_keep_geometry(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    aff = affine_for(3)
    save_image(arr, aff, tmp_path / "a.nii.gz")
    save_image(arr, aff, tmp_path / "a.nrrd")
    a1, f1, _ = load_image(tmp_path / "a.nii.gz")
    a2, f2, h2 = load_image(tmp_path / "a.nrrd")
    np.testing.assert_array_equal(a1, arr)
    np.testing.assert_array_equal(a2, arr)
    np.testing.assert_allclose(f2, f1, atol=1e-6)
    assert h2 is None


# ------------------------------------------------------------------------------- bad inputs
def test_missing_modality_names_the_case(brats2020):
    (brats2020 / "BraTS2020_001" / "BraTS2020_001_t1ce.nii.gz").unlink()
    with pytest.raises(DataError, match=r"BraTS2020_001: missing modality file\(s\) BraTS2020_001_t1ce\.nii\.gz"):
        find_cases(brats2020)


def test_missing_label_names_the_file(brats2020, tmp_path):
    (brats2020 / "BraTS2020_002" / "BraTS2020_002_seg.nii.gz").unlink()
    with pytest.raises(DataError, match=r"BraTS2020_002.*missing label file BraTS2020_002_seg\.nii\.gz"):
        find_cases(brats2020)
    assert find_cases(brats2020, require_labels=False)[2].label_path is None
    root = make_paired(tmp_path / "p", 2, phase=None)
    victim = sorted((root / "masks").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name.replace("_glm", "").replace(".", r"\.") + ": missing mask"):
        find_cases(root, layout="malc")


def test_corrupt_file_names_the_file(brats2020):
    p = brats2020 / "BraTS2020_000" / "BraTS2020_000_t2.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])  # truncated download
    with pytest.raises(DataError, match=r"BraTS2020_000_t2\.nii\.gz: unreadable or corrupt"):
        load_case(find_cases(brats2020)[0])
    p.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"BraTS2020_000_t2\.nii\.gz: unreadable or corrupt"):
        load_case(find_cases(brats2020)[0])


def test_shape_mismatch_names_the_file(brats2020):
    p = brats2020 / "BraTS2020_001" / "BraTS2020_001_flair.nii.gz"
    write(p, np.zeros((32, 32, 30), np.float32), affine_for(1))
    with pytest.raises(DataError, match=r"BraTS2020_001_flair\.nii\.gz: shape \(32, 32, 30\) differs"):
        load_case(find_cases(brats2020)[1])
    lab = brats2020 / "BraTS2020_002" / "BraTS2020_002_seg.nii.gz"
    write(lab, np.zeros((31, 32, 32), np.uint8), affine_for(2))
    with pytest.raises(DataError, match=r"BraTS2020_002_seg\.nii\.gz: label shape"):
        load_case(find_cases(brats2020)[2])


def test_affine_mismatch_names_the_file(brats2020):
    lab = brats2020 / "BraTS2020_000" / "BraTS2020_000_seg.nii.gz"
    write(lab, label_volume(0), affine_for(5))
    with pytest.raises(DataError, match=r"BraTS2020_000_seg\.nii\.gz: label affine differs"):
        load_case(find_cases(brats2020)[0])
    img = brats2020 / "BraTS2020_001" / "BraTS2020_001_t2.nii.gz"
    write(img, np.ones((32, 32, 32), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(DataError, match=r"BraTS2020_001_t2\.nii\.gz: affine differs"):
        load_case(find_cases(brats2020)[1])


def test_nan_voxels_name_the_file(brats2020):
    p = brats2020 / "BraTS2020_002" / "BraTS2020_002_t1.nii.gz"
    arr = np.ones((32, 32, 32), np.float32)
    arr[3, 4, 5] = np.nan
    arr[6, 7, 8] = np.inf
    write(p, arr, affine_for(2))
    with pytest.raises(DataError, match=r"BraTS2020_002_t1\.nii\.gz: 2 NaN/inf voxel"):
        load_case(find_cases(brats2020)[2])


def test_label_values_outside_declared_set_name_the_file(brats2020, tmp_path):
    lab = brats2020 / "BraTS2020_001" / "BraTS2020_001_seg.nii.gz"
    write(lab, label_volume(1, (0, 1, 2, 3)), affine_for(1))  # 2023 values in a 2020 layout
    with pytest.raises(DataError, match=r"BraTS2020_001_seg\.nii\.gz: label values \[3\] not in declared set"):
        load_case(find_cases(brats2020)[1])
    root = make_nnunet(tmp_path / "nn", 1)  # dataset.json declares 0, 1, 2
    write(root / "labelsTr" / "case_000.nii.gz", np.full((32, 32, 32), 7, np.uint8))
    with pytest.raises(DataError, match=r"case_000\.nii\.gz: label values \[7\]"):
        load_case(find_cases(root)[0])


def test_empty_dataset_names_the_folder(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: empty dataset"):
        find_cases(tmp_path / "empty", layout="malc")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing: cannot detect the dataset layout"):
        find_cases(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"missing_dir: dataset folder not found"):
        find_cases(tmp_path / "missing_dir")


def test_duplicate_case_ids_name_the_file(tmp_path):
    manifest = make_manifest(tmp_path / "f", 2, "json")
    data = json.loads(manifest.read_text())
    data["cases"][1]["case_id"] = data["cases"][0]["case_id"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"s1_c0\.nii\.gz: duplicate case id 'subj0'"):
        find_cases(manifest)


def test_validate_cases_reports_every_problem(brats2020):
    p = brats2020 / "BraTS2020_001" / "BraTS2020_001_t1.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b"\x00" * 10)
    rows = validate_cases(find_cases(brats2020))
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert "BraTS2020_001_t1.nii.gz" in rows[1]["error"]
    assert rows[0]["shape"] == "32×32×32" and rows[0]["spacing"] == "1×1.2×1.5"
    assert rows[0]["labels"].startswith("0:")


def test_make_brats_helper_is_portable(tmp_path):
    # split-by-id: the case order does not depend on the file system listing order
    a = make_brats(tmp_path / "a", 3)
    b = tmp_path / "b"
    b.mkdir()
    for d in reversed(sorted(p for p in a.iterdir() if p.is_dir())):
        shutil.copytree(d, b / d.name)
    assert [c.case_id for c in find_cases(a)] == [c.case_id for c in find_cases(b)]
    assert Path(find_cases(b)[0].image_paths[0]).parent.parent == b


def test_manifest_with_nrrd_images_and_cache_from_folder(tmp_path):
    from attnseg.data.cache import CaseCache

    root = tmp_path / "nrrd"
    for i in range(2):
        save_image(np.full((32, 32, 32), 100.0 * (i + 1), np.float32), affine_for(i), root / f"img{i}.nrrd")
        save_image(label_volume(i, (0, 1, 2, 3)), affine_for(i), root / f"lab{i}.mha")
    (root / "manifest.csv").write_text("image,label\nimg0.nrrd,lab0.mha\nimg1.nrrd,lab1.mha\n")
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["img0", "img1"]
    d = load_case(cases[1])
    np.testing.assert_allclose(d["affine"], affine_for(1), atol=1e-6)
    np.testing.assert_array_equal(d["label"], label_volume(1, (0, 1, 2, 3)))
    cache = CaseCache(root, tmp_path / "cache")  # a folder is accepted directly
    assert cache.prepare() == [0, 1] and cache[1].meta["case_id"] == "img1"
