import os
import time

import numpy as np
import pytest
import torch

from attnseg.data.augment import AugmentConfig, extract_patch
from attnseg.data.cache import CaseCache
from attnseg.data.dataset import PatchDataset, VolumeDataset, brats_regions_tensor
from attnseg.data.labels import brats_to_classes
from attnseg.data.preprocess import PreprocessConfig, preprocess_case, restore_prediction
from attnseg.data.readers import find_cases, load_case
from helpers.nifti import affine_for, label_volume, write


@pytest.fixture
def cache(brats2020, tmp_path):
    c = CaseCache(find_cases(brats2020), tmp_path / "cache")
    c.prepare()
    return c


def test_preprocess_crop_zscore_and_restore(brats2020):
    case = find_cases(brats2020)[0]
    d = load_case(case)
    out = preprocess_case(d, PreprocessConfig(), case.label_convention)
    meta = out["meta"]
    # crop to the union of non-zero image voxels and labels
    nz = np.argwhere(np.any(d["image"] != 0, axis=0) | (d["label"] > 0))
    assert meta["crop_lo"] == nz.min(0).tolist() and meta["crop_hi"] == (nz.max(0) + 1).tolist()
    img = out["image"]
    for ch in img:  # per-channel z-score over the foreground; background stays 0
        fg = ch[ch != 0]
        assert abs(fg.mean()) < 1e-4 and abs(fg.std() - 1) < 1e-3
    assert set(np.unique(out["label"])) == {0, 1, 2, 3}  # BraTS 0/1/2/4 -> classes
    # the processed affine maps processed voxel 0 to the world position of the crop corner
    lo = np.array(meta["crop_lo"] + [1.0])
    np.testing.assert_allclose(np.array(meta["processed_affine"])[:, 3], affine_for(0) @ lo)
    # predictions map back to the original grid exactly
    back = restore_prediction(out["label"], meta)
    np.testing.assert_array_equal(back, brats_to_classes(d["label"]))
    probs = np.stack([out["label"] == k for k in range(4)]).astype(np.float32)
    assert restore_prediction(probs, meta).shape == (4, 32, 32, 32)


def test_resampling_keeps_world_geometry(brats2020):
    case = find_cases(brats2020)[0]
    d = load_case(case)
    cfg = PreprocessConfig(target_spacing=(2.0, 2.4, 3.0))  # spacing (1, 1.2, 1.5) -> half the voxels
    out = preprocess_case(d, cfg, case.label_convention)
    meta = out["meta"]
    crop = np.array(meta["crop_hi"]) - np.array(meta["crop_lo"])
    assert out["image"].shape[1:] == tuple(int(round(n / 2)) for n in crop)
    assert meta["processed_spacing"] == pytest.approx([1.0 * c / s * 1 for c, s in zip(
        crop, out["image"].shape[1:])] * np.array([1.0, 1.2, 1.5]))
    # centre of processed voxel 0 in world = centre of the two original voxels it covers
    a0 = np.array(meta["processed_affine"]) @ np.array([0, 0, 0, 1.0])
    ratio = crop / np.array(out["image"].shape[1:])
    expect = affine_for(0) @ np.append(np.array(meta["crop_lo"]) + 0.5 * ratio - 0.5, 1)
    np.testing.assert_allclose(a0, expect, atol=1e-9)
    back = restore_prediction(out["label"], meta)
    assert back.shape == (32, 32, 32)
    agree = (back == brats_to_classes(d["label"])).mean()
    assert agree > 0.97


def test_cache_is_memory_mapped_and_invalidated(brats2020, tmp_path):
    cases = find_cases(brats2020)
    c = CaseCache(cases, tmp_path / "cache")
    assert c.prepare() == [0, 1, 2] and c.prepare() == []
    e = c[1]
    assert isinstance(e.image, np.memmap) and e.image.dtype == np.float32 and e.label.dtype == np.uint8
    assert set(e.fg_classes().tolist()) == {1, 2, 3}
    assert all(e.label[tuple(r[1:])] == r[0] for r in e.fg[:50])
    # touching a source file (new size/mtime) makes exactly that entry stale
    p = cases[2].image_paths[0]
    write(p, np.ones((32, 32, 32), np.float32) * 5, affine_for(2))
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert [c.is_fresh(i) for i in range(3)] == [True, True, False]
    assert c.prepare() == [2]
    # a different preprocessing configuration is a different cache key
    c2 = CaseCache(cases, tmp_path / "cache", PreprocessConfig(normalize="zscore_all"))
    assert not c2.is_fresh(0)


def test_patches_have_requested_size_and_foreground_fraction(cache):
    n = 200
    ds = PatchDataset(cache, (8, 8, 8), samples_per_epoch=n, fg_fraction=0.6, seed=3)
    fg = 0
    for i in range(n):
        item = ds[i]
        assert item["image"].shape == (4, 8, 8, 8) and item["image"].dtype == torch.float32
        assert item["label"].shape == (8, 8, 8) and item["label"].dtype == torch.int64
        fg += int(item["label"][4, 4, 4] > 0)  # the centre voxel (index P // 2) is the sampled one
    # labelled centres: 60 % forced + the random ones that land in the tumour; random centres are
    # uniform over the region where the patch fits inside the volume (index 4 .. n - 4)
    tumour_frac = np.mean([(cache[i].label[4:-3, 4:-3, 4:-3] > 0).mean() for i in range(3)])
    expected = 0.6 + 0.4 * tumour_frac
    assert abs(fg / n - expected) < 0.1
    # per-class oversampling: only ET (class 3) centres
    ds3 = PatchDataset(cache, (8, 8, 8), samples_per_epoch=30, fg_fraction=1.0, class_weights={3: 1.0})
    assert all(int(ds3[i]["label"][4, 4, 4]) == 3 for i in range(30))


def test_patch_matches_volume_and_pads(cache):
    e = cache[0]
    rng = np.random.default_rng(0)
    img, lab = extract_patch(e.image, e.label, np.array([5, 6, 7]), (8, 8, 8), rng, AugmentConfig.none())
    np.testing.assert_array_equal(img.numpy(), e.image[:, 1:9, 2:10, 3:11])
    np.testing.assert_array_equal(lab.numpy(), e.label[1:9, 2:10, 3:11])
    # a patch larger than the volume is zero-padded (image 0, label background)
    big = tuple(s + 10 for s in e.image.shape[1:])
    centre = np.array(e.image.shape[1:]) // 2
    img, lab = extract_patch(e.image, e.label, centre, big, rng, AugmentConfig.none())
    assert img.shape == (4, *big)
    lo = [b // 2 - c for b, c in zip(big, centre)]
    inner = tuple(slice(a, a + s) for a, s in zip(lo, e.image.shape[1:]))
    np.testing.assert_array_equal(img[(slice(None), *inner)].numpy(), e.image)
    assert float(img.abs().sum()) == pytest.approx(float(np.abs(e.image).sum()), rel=1e-5)
    ds = PatchDataset(cache, big, samples_per_epoch=2)
    assert ds[0]["image"].shape == (4, *big)


@pytest.mark.parametrize("flip_rot", [False, True])
def test_grid_path_equals_integer_path_without_deformation(cache, flip_rot):
    """The deformation path with identity rotation/scale and no elastic field must reproduce the
    exact crop (including flips and 90° rotations), i.e. both paths agree on geometry."""
    e = cache[1]
    p = 1.0 if flip_rot else 0.0
    base = dict(p_flip=p, p_rot90=p, rotate_deg=0.0, scale=(1.0, 1.0), elastic_voxels=0.0)
    centre = np.array([14, 15, 13])
    for seed in range(4):
        a = extract_patch(e.image, e.label, centre, (9, 10, 8), np.random.default_rng(seed),
                          AugmentConfig(**base, p_deform=0.0))
        # same draws for flips/rot90; p_deform=1 takes the grid path (its extra draws come after)
        b = extract_patch(e.image, e.label, centre, (9, 10, 8), np.random.default_rng(seed),
                          AugmentConfig(**base, p_deform=1.0))
        np.testing.assert_allclose(b[0].numpy(), a[0].numpy(), atol=1e-4)
        np.testing.assert_array_equal(b[1].numpy(), a[1].numpy())


def test_deformed_patches_keep_label_values_and_image_label_alignment(cache):
    ds = PatchDataset(cache, (16, 16, 16), samples_per_epoch=6, fg_fraction=1.0,
                      augment=AugmentConfig(p_deform=1.0, p_scale=0, p_shift=0, p_gamma=0, p_noise=0, p_bias=0))
    for i in range(6):
        item = ds[i]
        assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2, 3}
        img, lab = item["image"], item["label"]
        # constant-intensity phantom: inside the image box, tumour labels sit on non-zero image voxels
        assert (img[0][lab > 0] != 0).float().mean() > 0.95


def test_determinism_epochs_and_workers(cache):
    aug = AugmentConfig.all_on()
    a = PatchDataset(cache, (8, 8, 8), samples_per_epoch=6, augment=aug, seed=7)
    b = PatchDataset(cache, (8, 8, 8), samples_per_epoch=6, augment=aug, seed=7)
    for i in range(6):
        torch.testing.assert_close(a[i]["image"], b[i]["image"], rtol=0, atol=0)
    e0 = [a[i]["image"] for i in range(6)]
    a.set_epoch(1)
    e1 = [a[i]["image"] for i in range(6)]
    assert any(not torch.equal(x, y) for x, y in zip(e0, e1))
    a.set_epoch(0)  # resume: the same epoch gives the same data again
    assert all(torch.equal(x, a[i]["image"]) for i, x in enumerate(e0))
    assert sorted(a.case_order()[:3]) == [0, 1, 2]  # each case once per pass
    # the result does not depend on the number of DataLoader workers
    from torch.utils.data import DataLoader

    from attnseg.data.dataset import worker_init_fn

    loaded = [x["image"][0] for x in DataLoader(a, batch_size=1, num_workers=2, worker_init_fn=worker_init_fn)]
    assert all(torch.equal(x, y) for x, y in zip(loaded, e0))


def test_2d_slices_and_regions(cache):
    ds = PatchDataset(cache, (12, 12), samples_per_epoch=5, fg_fraction=1.0, regions=True,
                      augment=AugmentConfig.all_on())
    item = ds[0]
    assert item["image"].shape == (4, 12, 12) and item["label"].shape == (12, 12)
    assert item["regions"].shape == (3, 12, 12)
    ds2 = PatchDataset(cache, (12, 12), samples_per_epoch=5, fg_fraction=1.0)
    it = ds2[1]
    e = cache.index_of(it["case_id"])
    x, y, z = it["centre"].tolist()
    np.testing.assert_array_equal(it["label"].numpy(), cache[e].label[x - 6:x + 6, y - 6:y + 6, z]
                                  if x >= 6 and y >= 6 else it["label"].numpy())
    lab = torch.tensor([0, 1, 2, 3])
    assert brats_regions_tensor(lab).tolist() == [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]


def test_volume_dataset(cache):
    vd = VolumeDataset(cache, regions=True)
    item = vd[2]
    e = cache[2]
    assert item["image"].shape == e.image.shape and item["regions"].shape == (3, *e.image.shape[1:])
    np.testing.assert_array_equal(item["label"].numpy(), e.label)
    assert vd.meta(2)["case_id"] == "BraTS2020_002"
    restored = restore_prediction(item["label"].numpy(), vd.meta(2))
    np.testing.assert_array_equal(restored, brats_to_classes(label_volume(2)))
