"""2-D and 2.5-D models on volumes, end to end through the CLI (issue #19), and their building blocks."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from attnseg.cli.main import main
from attnseg.data.augment import AugmentConfig
from attnseg.data.slices import SliceDataset, stack_slices
from attnseg.train.checkpoint import load_checkpoint
from attnseg.train.config import resolve_config
from attnseg.train.data import MemoryCache, Volume, model_kwargs

SHAPE = (16, 16, 12)  # not a cube: a mixed-up axis shows up as a shape error
AFFINE = np.array([[-1.0, 0, 0, 12.0], [0, -1.2, 0, 20.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.integers(5, 9, 3)
    g = np.indices(SHAPE)
    r = np.sqrt(((g - c[:, None, None, None]) ** 2).sum(0))
    lab = np.zeros(SHAPE, np.uint8)
    lab[r < 4.5] = 1
    lab[r < 2.5] = 2
    img = np.stack([100 + 40 * lab + rng.normal(0, 5, SHAPE), 200 - 60 * lab + rng.normal(0, 5, SHAPE)])
    return img.astype(np.float32), lab


def _nnunet(root: Path, n: int = 4) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"},
                                                   "labels": {"background": 0, "a": 1, "b": 2},
                                                   "numTraining": n, "file_ending": ".nii.gz"}))
    for i in range(n):
        img, lab = _case(i)
        for ch in range(2):
            nib.save(nib.Nifti1Image(img[ch], AFFINE), root / "imagesTr" / f"case_{i:03d}_{ch:04d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    return root


def _config(tmp_path: Path) -> Path:
    cfg = {"device": "cpu",  # pinned: never the GPU of a CI host
           "task": {"kind": "classes", "num_classes": 3, "in_channels": 2},
           "model": {"kwargs": {"features": [4, 8, 8]}},
           "data": {"val_fraction": 0.25, "foreground_fraction": 0.5},
           "train": {"schedule": {"name": "constant"}, "optimizer": {"lr": 3e-3}},
           "log": {"tensorboard": False, "curves": False}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(tmp_path, data, name, *extra):
    args = ["train", "--config", str(_config(tmp_path)), "--data", str(data), "--layout", "nnunet", "--model", "unet",
            "--in-channels", "2", "--out-channels", "3", "--epochs", "2", "--iterations", "2", "--batch-size", "4",
            "--val-interval", "1", "--device", "cpu", "--output-dir", str(tmp_path / "runs"), "--name", name, *extra]
    assert main(args) == 0
    run = tmp_path / "runs" / name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [float(r["val_dice_mean"]) >= 0 for r in rows] == [True, True]  # validated on whole volumes each epoch
    return run / "checkpoints" / "last.pt"


def _predict_and_check(tmp_path, data, ckpt, out, *extra):
    assert main(["predict", "-c", str(ckpt), "-i", str(data / "imagesTr"), "-o", str(out), *extra]) == 0
    for i in range(4):
        ref = nib.load(data / "labelsTr" / f"case_{i:03d}.nii.gz")
        pred = nib.load(out / f"case_{i:03d}.nii.gz")
        assert pred.shape == ref.shape == SHAPE  # the source geometry
        np.testing.assert_allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


@pytest.mark.slow
def test_2d_and_25d_train_validate_predict_evaluate_through_the_cli(tmp_path, capsys):
    data = _nnunet(tmp_path / "ds")
    # issue #19, first command: `--patch-size 48 48` with a U-Net gave "UNet was built for 3D inputs"
    ckpt2 = _train(tmp_path, data, "u2d", "--patch-size", "16", "16")
    ck = load_checkpoint(ckpt2)
    assert ck["model_kwargs"]["spatial_dims"] == 2 and ck["model_kwargs"]["in_channels"] == 2
    assert ck["task"]["slice_axis"] == "axial" and ck["task"]["context"] == 0
    # third command: predict failed on every case, and `--roi 48 48 1` with "built for 2D inputs"
    _predict_and_check(tmp_path, data, ckpt2, tmp_path / "p2d")
    _predict_and_check(tmp_path, data, ckpt2, tmp_path / "p2d-roi", "--roi", "16", "16", "1")
    # 2.5-D along another axis: k=2 neighbours of both modalities = 10 input channels
    ckpt25 = _train(tmp_path, data, "u25d", "--slice-axis", "coronal", "--patch-size", "16", "12", "--context", "2")
    ck = load_checkpoint(ckpt25)
    assert ck["model_kwargs"]["in_channels"] == 10 and ck["model_kwargs"]["spatial_dims"] == 2
    assert ck["task"]["slice_axis"] == "coronal" and ck["task"]["context"] == 2 and ck["task"]["in_channels"] == 2
    _predict_and_check(tmp_path, data, ckpt25, tmp_path / "p25d")  # predict reads the context from the checkpoint
    _predict_and_check(tmp_path, data, ckpt2, tmp_path / "portho", "--slice-axis", "all", "--roi", "16", "16")
    # evaluate the whole-volume predictions against the references
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "p25d"), "--ref", str(data / "labelsTr"),
                 "--regions", "labels", "--labels", "1", "2", "--out", str(tmp_path / "ev")]) == 0
    rows = list(csv.DictReader((tmp_path / "ev" / "per_case.csv").open()))
    value = {"1": 1, "2": 2, "a": 1, "b": 2}  # regions are named by value or by dataset.json's label names
    assert sorted((r["case_id"], value[r["region"]]) for r in rows) == [(f"case_{i:03d}", g) for i in range(4)
                                                                        for g in (1, 2)]
    # the scores are those of the written 3-D maps on the reference grid
    for r in rows:
        pred = np.asarray(nib.load(tmp_path / "p25d" / f"{r['case_id']}.nii.gz").dataobj) == value[r["region"]]
        ref = np.asarray(nib.load(data / "labelsTr" / f"{r['case_id']}.nii.gz").dataobj) == value[r["region"]]
        want = 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) if pred.any() or ref.any() else 1.0
        assert float(r["dice"]) == pytest.approx(want, abs=1e-6)


def test_patch_size_with_two_values_means_slices():
    cfg = resolve_config({"data": {"patch_size": [48, 48]}, "model": {"name": "unet", "kwargs": {}}})
    assert cfg["data"]["slice_axis"] == "axial" and cfg["data"]["context"] == 0
    assert cfg["validation"]["roi_size"] == [48, 48]
    assert model_kwargs(cfg)["spatial_dims"] == 2
    cfg = resolve_config({"data": {"patch_size": [32, 24, 16], "slice_axis": "coronal", "context": 1},
                          "model": {"name": "unet", "kwargs": {"in_channels": 4}}})
    assert cfg["data"]["patch_size"] == [32, 16]  # the in-plane values of the 3-D patch
    assert model_kwargs(cfg)["in_channels"] == 4 * 3
    assert resolve_config(cfg) == cfg  # resolving twice changes nothing (resume reads the saved config)
    with pytest.raises(ValueError, match="data.context"):
        resolve_config({"data": {"patch_size": [32, 32, 32], "context": 2}})


def test_2d_model_errors_name_the_fix():
    three_d = resolve_config({"data": {"patch_size": [48, 48]}, "model": {"name": "unet3d", "kwargs": {}}})
    with pytest.raises(ValueError, match="'unet3d' is 3-D only"):
        model_kwargs(three_d)
    explicit = resolve_config({"data": {"patch_size": [48, 48]}, "model": {"name": "unet",
                                                                         "kwargs": {"spatial_dims": 3}}})
    with pytest.raises(ValueError, match="spatial_dims=3 but data.patch_size"):
        model_kwargs(explicit)


def _cache(n=2):
    vols = []
    for i in range(n):
        img, lab = _case(10 + i)
        vols.append(Volume(f"v{i}", img, lab))
    return MemoryCache(vols)


def test_slice_samples_foreground_oversampling_and_context_layout():
    cache = _cache()
    ds = SliceDataset(cache, [8, 8], axis="coronal", context=1, samples_per_epoch=12, fg_fraction=1.0,
                      augment=AugmentConfig.none(), seed=5)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (6, 8, 8) and item["label"].shape == (8, 8) and item["axis"] == 1
        case = cache[[c.case_id for c in cache._cases].index(item["case_id"])]
        x, y, z = item["centre"].tolist()
        assert item["label"][4, 4] > 0  # fg_fraction 1: every patch centred on a labelled voxel
        assert item["label"][4, 4] == case.label[x, y, z]
        want = stack_slices(case.image, 1, [y], 1)[0][:, x, z]  # (6,) = (modality, slice y-1..y+1)
        np.testing.assert_array_equal(item["image"][:, 4, 4].numpy(), want)
        torch.testing.assert_close(ds[i]["image"], item["image"])  # a pure function of (seed, epoch, index)
    mixed = SliceDataset(cache, [8, 8], axis="all", samples_per_epoch=30, fg_fraction=0.5, seed=1)
    assert {mixed[i]["axis"] for i in range(30)} == {0, 1, 2}


def test_slice_augmentation_acts_in_the_plane():
    cache = _cache(1)
    plain = SliceDataset(cache, [8, 8], axis=2, context=1, samples_per_epoch=4, augment=AugmentConfig.none(), seed=2)
    flip = AugmentConfig.none()
    flip.p_flip, flip.flip_axes = 1.0, (0,)
    flipped = SliceDataset(cache, [8, 8], axis=2, context=1, samples_per_epoch=4, augment=flip, seed=2)
    for i in range(4):
        a, b = plain[i], flipped[i]
        assert a["centre"].tolist() == b["centre"].tolist()
        torch.testing.assert_close(b["image"], torch.flip(a["image"], [1]))
        torch.testing.assert_close(b["label"], torch.flip(a["label"], [0]))
    full = SliceDataset(cache, [8, 8], axis=2, context=2, samples_per_epoch=3, augment=AugmentConfig.all_on(), seed=3)
    item = full[0]
    assert item["image"].shape == (10, 8, 8) and torch.isfinite(item["image"]).all()
    assert set(item["label"].unique().tolist()) <= {0, 1, 2}


def test_ablation_variant_rows():
    from attnseg.experiments.ablate import Cell, backbone_model, cell_config
    from attnseg.models import count_parameters, create_model

    base = {"data": {"patch_size": [48, 48, 48]}, "task": {"in_channels": 4},
            "ablate": {"backbone_kwargs": {"unet": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                                                    "features": [8, 16, 32]},
                                           "deeplabv3plus": {"in_channels": 4, "out_channels": 3}}}}
    assert backbone_model(base, "unet-2.5d") == "unet" and backbone_model(base, "vnet") == "vnet"
    rows = {}
    for bb in ("unet", "unet-2d", "unet-2.5d", "deeplabv3plus-2d"):
        cfg = resolve_config(cell_config(base, Cell(bb, "none", 0), Path("out"), None))
        kw = model_kwargs(cfg)
        rows[bb] = (cfg, kw, count_parameters(create_model(cfg["model"]["name"], **kw)))
    assert rows["unet"][1]["spatial_dims"] == 3 and rows["unet"][0]["data"]["slice_axis"] is None
    cfg, kw, _ = rows["unet-2.5d"]
    assert cfg["data"]["patch_size"] == [48, 48] and cfg["data"]["context"] == 2 and kw["in_channels"] == 20
    assert rows["unet-2d"][1]["spatial_dims"] == 2 and rows["unet-2d"][1]["in_channels"] == 4
    assert rows["unet-2d"][2] < rows["unet-2.5d"][2] < rows["unet"][2]  # 2-D kernels: fewer parameters
    assert rows["deeplabv3plus-2d"][0]["model"]["name"] == "deeplabv3plus"


def test_shipped_ablation_config_has_runnable_2d_rows():
    from attnseg.experiments.ablate import Cell, cell_config
    from attnseg.models import count_parameters, create_model
    from attnseg.train.config import load_yaml

    raw = load_yaml(Path(__file__).resolve().parents[2] / "configs" / "ablation-phantom.yaml")
    params = {}
    for bb in ("unet3d", "unet-2d", "unet-2.5d", "deeplabv3plus-2d"):
        cfg = resolve_config(cell_config(raw, Cell(bb, "none", 0), Path("out"), None))
        kw = model_kwargs(cfg)
        params[bb] = count_parameters(create_model(cfg["model"]["name"], **kw))
        if bb != "unet3d":
            assert cfg["data"]["patch_size"] == [48, 48] and cfg["data"]["batch_size"] == 96
            assert cfg["validation"]["roi_size"] == [48, 48]  # the base config's 48³ window, in-plane
            assert kw["spatial_dims"] == 2 and kw["in_channels"] == (20 if bb == "unet-2.5d" else 4)
    assert 0.8 < params["unet-2d"] / params["unet3d"] < 1.25  # the 2-D U-Net row is matched in size


def test_25d_resume_is_exact(tmp_path):
    """Slice samples are a pure function of (seed, epoch, index): a stopped and resumed 2.5-D run
    ends with the weights of an uninterrupted one."""

    from attnseg.train.trainer import run_training
    from helpers.tiny import tiny_config, tiny_volumes

    def cfg(name, **over):
        return tiny_config(tmp_path, name, data__patch_size=[16, 16], data__context=1, data__slice_axis="all",
                           model__kwargs={"in_channels": 2, "out_channels": 4, "features": [4, 8]},
                           validation__interval=2, **over)

    def vols():
        return tiny_volumes(3, 0), tiny_volumes(1, 1)

    straight = run_training(cfg("straight"), volumes=vols())
    run_training(cfg("split", train__stop_after_epochs=2), volumes=vols())
    resumed = run_training(cfg("split"), resume=True, volumes=vols())
    a = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert a["model_kwargs"]["in_channels"] == 6 and a["task"]["slice_axis"] == "all"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    def val(h):  # validation rows (a resumed history re-read from metrics.csv has '' where none ran)
        return [r["val_dice_mean"] for r in h if r.get("val_dice_mean") not in (None, "")]

    assert val(straight.history) == val(resumed.history) and len(val(straight.history)) == 2
    assert straight.history[-1]["val_dice_mean"] >= 0  # validated over the three orthogonal directions
