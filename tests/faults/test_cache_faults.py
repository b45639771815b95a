"""A damaged or foreign preprocessing cache is detected by its manifest (meta.json: sizes and
checksums, sources, preprocessing configuration) and rebuilt with the reason logged; never
trained on as it is."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from attnseg.cli.main import main
from attnseg.data.cache import CaseCache
from attnseg.data.preprocess import PreprocessConfig
from attnseg.data.readers import Case
from helpers.faults import train_config, write_brats


def test_truncated_altered_or_metadata_less_cache_entries_are_rebuilt_before_training(tmp_path):
    data = write_brats(tmp_path / "data", 3)
    cfg = train_config(tmp_path, "run", data, train__epochs=2)
    assert main(["train", "--config", str(cfg), "--set", "train.stop_after_epochs=1"]) == 0
    (cache,) = (tmp_path / "cache").iterdir()
    good = tmp_path / "good"
    shutil.copytree(cache, good)
    ids = [f"BraTS20_Training_{i:03d}" for i in range(3)]
    img0 = cache / ids[0] / "image.npy"
    size0 = img0.stat().st_size
    img0.write_bytes(img0.read_bytes()[: size0 // 2])  # a copy cut short
    (cache / ids[1] / "meta.json").unlink()  # a job killed before the manifest (old layout)
    lab2 = cache / ids[2] / "label.npy"
    raw = bytearray(lab2.read_bytes())
    raw[-1] ^= 0xFF  # same size, one voxel changed
    lab2.write_bytes(bytes(raw))
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    log = (tmp_path / "runs" / "run" / "log.txt").read_text()
    assert f"cache entry of {ids[0]} rebuilt: image.npy is truncated or altered ({size0 // 2} bytes, " \
           f"manifest says {size0})" in log
    assert f"cache entry of {ids[1]} rebuilt: missing metadata (meta.json)" in log
    assert f"cache entry of {ids[2]} rebuilt: label.npy does not match its checksum" in log
    for cid in ids:  # rebuilt from the sources: identical to the intact entries
        for name in ("image.npy", "label.npy", "fg.npy"):
            assert np.array_equal(np.load(cache / cid / name), np.load(good / cid / name)), (cid, name)


def _case(tmp: Path, side: int = 48) -> Case:
    rng = np.random.default_rng(0)
    img = np.zeros((side,) * 3, np.float32)
    img[4:-4, 4:-4, 4:-4] = rng.normal(100, 20, (side - 8,) * 3)
    lab = np.zeros((side,) * 3, np.uint8)
    lab[20:28, 20:28, 20:28] = 1
    tmp.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp / "img.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp / "lab.nii.gz")
    return Case("c0", [tmp / "img.nii.gz"], tmp / "lab.nii.gz", "folder")


def test_cache_of_another_preprocessing_config_is_rebuilt_and_full_verify_finds_a_flipped_byte(tmp_path, caplog):
    case = _case(tmp_path / "src")
    a = CaseCache([case], tmp_path / "a", PreprocessConfig(normalize="zscore"))
    assert a.prepare() == [0] and a.rebuilt == {}
    # an entry built with another configuration put where this one's cache lives
    b = CaseCache([case], tmp_path / "b", PreprocessConfig(normalize="none"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert b.problem(0) == "built with another preprocessing configuration"
    with caplog.at_level("WARNING", logger="attnseg.data.cache"):
        assert b.prepare() == [0]
    assert b.rebuilt == {"c0": "built with another preprocessing configuration"}
    assert "rebuilding it" in caplog.text
    fresh = CaseCache([case], tmp_path / "fresh", PreprocessConfig(normalize="none"))
    fresh.prepare()
    assert np.array_equal(b[0].image, fresh[0].image) and not np.array_equal(b[0].image, a[0].image)
    # one byte flipped in the middle of a file larger than the quick check's two 64 KiB ends
    img = tmp_path / "a" / "c0" / "image.npy"
    assert img.stat().st_size > 2 * 65536
    raw = bytearray(img.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    img.write_bytes(bytes(raw))
    a2 = CaseCache([case], tmp_path / "a", PreprocessConfig(normalize="zscore"))
    assert a2.problem(0) is None  # the quick check reads only the ends
    assert a2.problem(0, verify="full") == "image.npy does not match its checksum"
    assert a2.prepare(verify="full") == [0] and a2.problem(0, verify="full") is None
