"""torch.compile in prediction (``SlidingWindowInferer(compile=True)``, ``attnseg predict
--compile``) and training (``train.compile``): same outputs as eager, compiled once per window
shape, first-call cost reported. One real inductor compilation (a tiny network): compiling is slow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnseg.infer.sliding_window import SlidingWindowInferer


def test_compiled_sliding_window_matches_eager_and_compiles_once_per_shape():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(0.01),
                        nn.Conv3d(4, 3, 1)).eval()
    vols = [torch.randn(1, 2, 10, 9, 12), torch.randn(1, 2, 12, 8, 8)]
    logs: list[str] = []
    comp = SlidingWindowInferer(8, compile=True, log=logs.append)
    eager = SlidingWindowInferer(8)
    for v in vols:  # two cases, several windows each, one window shape
        assert torch.allclose(comp(v, net), eager(v, net), atol=1e-5)
    assert len(logs) == 1 and "first call for windows (1, 2, 8, 8, 8)" in logs[0]
    assert list(comp.compile_seconds) == [((1, 2, 8, 8, 8), "fp32")]


def test_train_compile_config(tmp_path, monkeypatch, caplog):
    from attnseg.train.config import resolve_config
    from attnseg.train.trainer import run_training
    from helpers.tiny import tiny_config, tiny_volumes

    with pytest.raises(ValueError, match="train.compile must be auto, true or false"):
        resolve_config(tiny_config(tmp_path, "x", train__compile="yes"))
    assert resolve_config(tiny_config(tmp_path, "x"))["train"]["compile"] == "auto"
    # compile: true wraps the training network once with one static shape (the real compilation
    # is covered above; a recorder stands in for it here) and logs the first iteration's cost
    calls = []

    def fake_compile(model, **kw):
        calls.append(kw)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = tiny_config(tmp_path, "c", train__compile=True, train__epochs=2, validation__interval=0)
    with caplog.at_level("INFO", logger="attnseg"):
        run_training(cfg, volumes=(tiny_volumes(2, 0), tiny_volumes(1, 1)))
    assert calls == [{"dynamic": False}]
    assert "torch.compile: first training iteration took" in (tmp_path / "c" / "log.txt").read_text()
    calls.clear()
    run_training(tiny_config(tmp_path, "a", train__epochs=2, validation__interval=0),
                 volumes=(tiny_volumes(2, 0), tiny_volumes(1, 1)))
    assert calls == []  # auto: not on CPU


def test_predict_cli_compile_flag(tmp_path, monkeypatch, capsys):
    from attnseg.cli.main import main
    from attnseg.models import create_model
    from attnseg.train.checkpoint import model_checkpoint, save_checkpoint
    from helpers.tiny import write_brats

    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": (4, 8)}
    task = {"kind": "brats-regions", "num_classes": 4, "in_channels": 4, "channel_names": ["t1", "t1ce", "t2", "flair"],
            "label_convention": "brats", "patch_size": [8, 8, 8], "preprocess": {"crop_nonzero": True}}
    save_checkpoint(model_checkpoint("unet", kwargs, create_model("unet", **kwargs).state_dict(), task=task),
                    tmp_path / "m.pt")
    data = write_brats(tmp_path / "brats", 1)
    compiled = []

    def fake_compile(model, **kw):  # a recorder: the real compilation is tested above
        compiled.append((type(model).__name__, {type(m).__name__ for m in model.modules()}, kw))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert main(["predict", "-c", str(tmp_path / "m.pt"), "-i", str(data), "-o", str(tmp_path / "out"),
                 "--compile"]) == 0
    assert len(compiled) == 1  # once for every window of every case
    name, classes, kw = compiled[0]
    assert name == "UNet" and "Conv3d" in classes and "OneDNNConv3d" not in classes  # plain modules
    assert kw == {"backend": "inductor", "dynamic": False, "options": {"freezing": True}}
    assert "torch.compile: first call for windows (1, 4, 8, 8, 8) (fp32)" in capsys.readouterr().err
