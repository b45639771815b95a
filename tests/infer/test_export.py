"""ONNX / TorchScript export: parity with PyTorch for a hand-built model and for every registered model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from attnseg.cli.main import main
from attnseg.infer.export import (
    ExportError,
    InferenceWrapper,
    example_input,
    export_model,
    input_spec,
    probe_input_size,
    run_exported,
)
from attnseg.models import MODELS, create_model, list_models
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


class TinyNet(nn.Module):
    """Encoder-decoder with a strided conv, a norm and a resize back to the input size; returns a
    training-style dict in train mode and the logits in eval mode (the models' contract)."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2, classes: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        inorm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.a = conv(in_channels, 6, 3, padding=1)
        self.n = inorm(6, affine=True)
        self.down = conv(6, 6, 3, stride=2, padding=1)
        self.head = conv(6, classes, 1)

    def forward(self, x):
        y = torch.relu(self.n(self.a(x)))
        z = nn.functional.interpolate(self.down(y), size=x.shape[2:], mode=self.mode, align_corners=False)
        out = self.head(y + z)
        return {"out": out, "level1": z} if self.training else out


def _numpy_reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return InferenceWrapper(model.eval())(x).numpy()


@pytest.mark.parametrize("dims", [2, 3])
def test_onnx_dynamic_axes_match_torch_at_other_sizes(tmp_path, dims):
    torch.manual_seed(0)
    model = TinyNet(dims).eval()
    x = torch.randn(1, 2, *([12] * dims))
    res = export_model(model, x, tmp_path / "m.onnx", "onnx", dynamic=True)
    # the export itself checked a second, larger input with batch 2
    assert len(res.checked_shapes) == 2 and res.checked_shapes[1][0] == 2
    assert res.max_abs_diff < 1e-4
    # an independent input size and batch, compared with PyTorch here
    x2 = torch.randn(3, 2, *([20] * (dims - 1)), 14)
    got = run_exported(res.path, x2).numpy()
    np.testing.assert_allclose(got, _numpy_reference(model, x2), atol=1e-4, rtol=1e-4)
    assert got.shape == (3, 3, *x2.shape[2:])


def test_static_onnx_rejects_other_sizes_and_keeps_metadata(tmp_path):
    model = TinyNet(3).eval()
    x = torch.randn(1, 2, 8, 8, 8)
    res = export_model(model, x, tmp_path / "s.onnx", metadata={"attnseg.model_name": "tiny"})
    assert res.output_shape == (1, 3, 8, 8, 8) and res.checked_shapes == [(1, 2, 8, 8, 8)]
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert props["attnseg.model_name"] == "tiny"
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    with pytest.raises(InvalidArgument):  # a static graph must not silently accept another shape
        run_exported(res.path, torch.randn(1, 2, 10, 8, 8))


def test_torchscript_export_matches_torch(tmp_path):
    model = TinyNet(2).eval()
    x = torch.randn(2, 2, 16, 16)
    res = export_model(model, x, tmp_path / "m.ts.pt", "torchscript", dynamic=True)
    assert res.exporter == "jit.trace" and res.max_abs_diff < 1e-5
    x2 = torch.randn(1, 2, 24, 20)
    np.testing.assert_allclose(run_exported(res.path, x2).numpy(), _numpy_reference(model, x2), atol=1e-5)


def test_training_dict_output_is_reduced_to_out():
    model = TinyNet(3).train()
    y = InferenceWrapper(model)(torch.randn(1, 2, 8, 8, 8))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3, 8, 8, 8)


def test_input_spec_and_probe():
    model = TinyNet(2, in_channels=5).eval()
    assert input_spec(model) == (5, 2)
    assert probe_input_size(model, 5, 2) == (32, 32)
    with pytest.raises(ExportError, match="no convolution"):
        input_spec(nn.Linear(3, 3))


def test_export_parity_failure_is_reported(tmp_path, monkeypatch):
    import attnseg.infer.export as ex

    model = TinyNet(2).eval()
    real = ex.run_exported
    monkeypatch.setattr(ex, "run_exported", lambda p, x, fmt=None: real(p, x, fmt) + 1.0)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_model(model, torch.randn(1, 2, 8, 8), tmp_path / "bad.onnx")


def test_unknown_format_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(TinyNet(2), torch.randn(1, 2, 8, 8), tmp_path / "x.bin", fmt="tflite")


# ---- every registered model -------------------------------------------------------------------

# Models register their documented (often heavy) configuration as defaults. For a quick parity
# check each is built with its registry tag ``test_kwargs`` when it has one, else with the
# widths of its ``width_arg`` tag divided by 4, and run at its ``test_input`` tag when it has one,
# else at the smallest cubic input it accepts.
MODEL_NAMES = list_models()


def _tiny_kwargs(name: str) -> dict:
    entry = MODELS.get(name)
    if entry.tags["test_kwargs"] is not None:
        return dict(entry.tags["test_kwargs"])
    key = entry.tags["width_arg"]
    widths = entry.defaults.get(key)
    if isinstance(widths, int):
        return {key: max(4, widths // 4)}
    if isinstance(widths, (tuple, list)) and all(isinstance(c, int) for c in widths):
        return {key: tuple(max(4, int(c) // 4) for c in widths)}
    return {}


def _tiny(name: str) -> tuple[nn.Module, torch.Tensor, dict]:
    entry = MODELS.get(name)
    torch.manual_seed(0)
    kwargs = _tiny_kwargs(name)
    try:
        model = create_model(name, **kwargs).eval()
    except Exception:  # the reduced widths break a constraint of this model: use its defaults
        kwargs = {}
        model = create_model(name).eval()
    size = entry.tags.get("test_input")
    _, dims = input_spec(model)
    if size is not None and len(size) == dims + 2:  # full (B, C, *spatial) shape
        size = size[2:]
    x = example_input(model, {"model_kwargs": {**entry.defaults, **kwargs}}, input_size=size,
                      probe_sizes=(16, 32, 64, 24, 48, 96, 128))
    return model, x, kwargs


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_exports_to_onnx_with_parity(tmp_path, name):
    model, x, _ = _tiny(name)
    res = export_model(model, x, tmp_path / f"{name}.onnx", "onnx")  # raises ExportError on a mismatch
    assert res.path.is_file() and res.checked_shapes == [tuple(x.shape)]
    assert res.output_shape[0] == x.shape[0] and res.output_shape[2:] == tuple(x.shape[2:])
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4 * max(1.0, 10.0)


def test_cli_export_from_checkpoint(tmp_path, capsys):
    if not MODEL_NAMES:
        pytest.skip("no model registered yet")
    name = "unet" if "unet" in MODEL_NAMES else MODEL_NAMES[0]
    model, x, kwargs = _tiny(name)
    ck = save_checkpoint(model_checkpoint(name, kwargs, model.state_dict(),
                                          task={"kind": "classes", "in_channels": x.shape[1],
                                                "patch_size": list(x.shape[2:])}), tmp_path / "m.pt")
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--dynamic"]) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and (tmp_path / "m.onnx").is_file()
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["attnseg.model_name"] == name
    assert json.loads(props["attnseg.task"])["patch_size"] == list(x.shape[2:])
    # the file written by the command agrees with the checkpoint's model
    got = run_exported(tmp_path / "m.onnx", x).numpy()
    np.testing.assert_allclose(got, _numpy_reference(model, x), atol=1e-4, rtol=1e-4)


def test_cli_export_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt")]) == 1
    assert "checkpoint file not found" in capsys.readouterr().err
