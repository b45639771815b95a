"""The two bf16 commands of issue 14 through the CLI, at tiny sizes that reach every fast path.

``attnseg train ... --model unet --set model.kwargs.attention=scse --precision bf16`` crashed in
the first backward (the fused scSE node mixed bf16 activations with float32 weights), and
``attnseg predict ... --precision bf16`` crashed in the in-place instance norm (bf16 activations,
float32 affine parameters). bf16 is emulated on AVX2-only CPUs: slow but correct, so both run here.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from attnseg.cli.main import main
from attnseg.infer import fastpath
from attnseg.models import create_model
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint
from helpers.tiny import tiny_config, write_brats


def test_train_unet_scse_bf16_cli(tmp_path):
    data = write_brats(tmp_path / "brats", 2, seed=4)
    cfg = tiny_config(tmp_path / "runs", "bf16", in_channels=4, train__epochs=2, validation__interval=2)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    argv = ["train", "--config", str(f), "--dataroot", str(data), "--model", "unet",
            "--set", "model.kwargs.attention=scse", "--precision", "bf16"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "bf16"
    assert "bf16" in (run / "log.txt").read_text()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2
    for r in rows:
        assert math.isfinite(float(r["train_loss"]))
    assert math.isfinite(float(rows[-1]["val_dice_WT"]))
    sd = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    # the scSE parameters were trained (finite, and changed from their initial values)
    scse = {k: v for k, v in sd.items() if ".sse." in k or ".cse." in k}
    assert scse and all(torch.isfinite(v).all() for v in scse.values())


def _native_bf16_cpu(monkeypatch) -> list[torch.dtype]:
    """Make attnseg believe the CPU has native bf16 oneDNN convolutions (as AVX-512 BF16 / AMX
    machines do), with the oneDNN call replaced by the generic (emulated) convolution; returns
    the list of dtypes that reach the in-place instance norm, whose size threshold is lowered so
    that 8³ windows take it."""
    monkeypatch.setitem(fastpath._STATE, "bf16", True)

    def conv(x, w, b, padding, stride, dilation, groups):
        nd = x.dim() - 2
        return torch.ops.aten.convolution(x, w, b, stride, padding, dilation, False, [0] * nd, groups)

    monkeypatch.setattr(fastpath, "_mkldnn_conv", conv)
    monkeypatch.setattr(fastpath, "_INPLACE_NORM_MIN", 0)
    seen: list[torch.dtype] = []
    real = fastpath._instance_norm_inplace

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return real(x, *a, **k)

    monkeypatch.setattr(fastpath, "_instance_norm_inplace", spy)
    return seen


def _checkpoint(path: Path) -> None:
    torch.manual_seed(1)
    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": (4, 8), "attention": "scse"}
    model = create_model("unet", **kwargs)
    with torch.no_grad():  # affine norms with non-trivial parameters
        for m in model.modules():
            if isinstance(m, torch.nn.InstanceNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    task = {"kind": "brats-regions", "num_classes": 4, "in_channels": 4, "channel_names": ["t1", "t1ce", "t2", "flair"],
            "label_convention": "brats", "patch_size": [8, 8, 8],
            "preprocess": {"crop_nonzero": True, "normalize": "zscore"}}
    save_checkpoint(model_checkpoint("unet", kwargs, model.state_dict(), task=task), path)


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_predict_bf16_cli_in_place_norm(tmp_path, monkeypatch, tta):
    ckpt = tmp_path / "m.pt"
    _checkpoint(ckpt)
    data = write_brats(tmp_path / "brats", 1, seed=2)
    extra = ["--tta"] if tta else []
    common = ["predict", "-c", str(ckpt), "-i", str(data), "--roi", "8", "8", "8", "--save-probs", *extra]
    monkeypatch.setattr(fastpath, "_INPLACE_NORM_MIN", 0)
    assert main([*common, "-o", str(tmp_path / "fp32")]) == 0
    seen = _native_bf16_cpu(monkeypatch)
    assert main([*common, "-o", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    assert torch.bfloat16 in seen  # the in-place norm ran on bf16 activations
    cid = "BraTS20_Training_000"
    p32 = nib.load(tmp_path / "fp32" / f"{cid}_probs.nii.gz").get_fdata()
    p16 = nib.load(tmp_path / "bf16" / f"{cid}_probs.nii.gz").get_fdata()
    assert p32.shape == p16.shape and np.isfinite(p16).all()
    # bf16 keeps 8 mantissa bits: probabilities agree to a few 1e-2, not bit for bit
    diff = np.abs(p32 - p16)
    assert diff.max() < 0.05 and diff.mean() < 0.01
    assert 0 < diff.max()  # the bf16 run did not silently fall back to fp32
