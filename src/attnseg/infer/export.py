"""Export a model's inference path to ONNX or TorchScript and check it against PyTorch.

The exported graph is the eval-mode forward that returns the ``out`` logits at full input
resolution (training-only outputs such as deep-supervision levels or the PANet prior are not
part of it). Every export is verified: the file is loaded back (onnxruntime for ONNX,
``torch.jit.load`` for TorchScript), run on the example input (and, with ``dynamic=True``, on
a second input with another batch size and spatial size where the model accepts one) and
compared with the PyTorch output; the maximum absolute difference is returned.

Typical use::

    from attnseg.infer.export import export_checkpoint
    result = export_checkpoint("run/checkpoints/best.pt", fmt="onnx", dynamic=True)
    print(result.path, result.max_abs_diff)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnseg.models.checkpoint import build_model_from_checkpoint
from attnseg.runtime.optional import require

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
# spatial edge lengths tried, in order, when nothing says which input size a model accepts
PROBE_SIZES = (32, 64, 16, 48, 96, 128)


class ExportError(ValueError):
    """The model could not be exported, or the exported file disagrees with PyTorch."""


class InferenceWrapper(nn.Module):
    """The inference path of a segmentation model as a single-tensor function.

    ``forward(x)`` with ``x`` of shape ``(B, C_in, *spatial)`` returns the logits
    ``(B, C_out, *spatial)``: the model's output when it is a tensor, ``out`` when it is a
    dict (training-style outputs), the first element when it is a tuple/list.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if isinstance(y, dict):
            if "out" not in y:
                raise ExportError(f"model returned a dict without 'out' (keys: {sorted(y)})")
            y = y["out"]
        elif isinstance(y, (tuple, list)):
            y = y[0]
        return y


@dataclass
class ExportResult:
    """What :func:`export_model` / :func:`export_checkpoint` produced and measured."""

    path: Path
    fmt: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float | None = None
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    exporter: str = ""
    dynamic: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def input_spec(model: nn.Module) -> tuple[int, int]:
    """``(in_channels, spatial_dims)`` of the model's input.

    Taken from the model's ``in_channels`` / ``spatial_dims`` attributes (attnseg backbones have
    them), else from its first convolution. Raises :class:`ExportError` when neither exists.
    """
    c, d = getattr(model, "in_channels", None), getattr(model, "spatial_dims", None)
    if isinstance(c, int) and isinstance(d, int):
        return c, d
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Conv1d)):
            return int(m.in_channels), {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(m)]
    raise ExportError("cannot tell the model's input channels and dimensionality (no convolution found); "
                      "pass the input size explicitly")


def _runs(model: nn.Module, shape: Sequence[int]) -> bool:
    try:
        with torch.no_grad():
            InferenceWrapper(model)(torch.zeros(*shape))
        return True
    except Exception:  # any failure means "this size is not accepted"
        return False


def probe_input_size(model: nn.Module, in_channels: int, spatial_dims: int,
                     hints: dict[str, Any] | None = None, sizes: Sequence[int] = PROBE_SIZES) -> tuple[int, ...]:
    """A spatial size the model accepts, found by running it (eval mode, no gradients).

    ``hints`` (model kwargs) may fix the depth: slice-attention models are built for one slice
    count (``depth``), which then becomes the first spatial axis. Sizes are tried small first
    (``sizes``, default :data:`PROBE_SIZES`). Raises :class:`ExportError` when none works.
    """
    hints = hints or {}
    depth = hints.get("depth") if spatial_dims == 3 else None
    for s in sizes:
        size = (int(depth), s, s) if isinstance(depth, int) else (s,) * spatial_dims
        if _runs(model, (1, in_channels, *size)):
            return size
    raise ExportError(f"the model accepts none of the probed input sizes {tuple(sizes)} "
                      f"(in_channels={in_channels}, spatial_dims={spatial_dims}); pass --input-size")


def _alternative_shape(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Another accepted input shape (batch 2, larger spatial size if possible) to check dynamic axes."""
    b, c, *sp = shape
    for grow in (16, 32, 0):
        cand = (2, c, *[s + grow for s in sp])
        if _runs(model, cand):
            return cand
    return None


def _atomic_target(path: Path) -> tuple[Path, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp), path


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, tmp: Path, dynamic: bool, opset: int,
                 exporter: str) -> str:
    nd = example.dim() - 2
    spatial_names = {2: ["height", "width"], 3: ["depth", "height", "width"]}.get(nd, [f"s{i}" for i in range(nd)])
    axes = {0: "batch", **{i + 2: n for i, n in enumerate(spatial_names)}}
    errors = []
    order = {"auto": ("legacy", "dynamo"), "legacy": ("legacy",), "dynamo": ("dynamo",)}[exporter]
    for kind in order:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                # the legacy exporter is deprecated upstream but handles more models; its warnings
                # (and the tracer's) are noise for a user who asked for an export
                warnings.simplefilter("ignore")
                if kind == "legacy":
                    torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
                                      input_names=["image"], output_names=["logits"],
                                      dynamic_axes={"image": axes, "logits": axes} if dynamic else None,
                                      do_constant_folding=True)
                else:
                    shapes = None
                    if dynamic:
                        dim = torch.export.Dim.AUTO
                        shapes = {"x": {k: dim for k in axes}}
                    torch.onnx.export(wrapper, (example,), str(tmp), dynamo=True, opset_version=max(opset, 18),
                                      input_names=["image"], output_names=["logits"], dynamic_shapes=shapes,
                                      external_data=False)
            return kind
        except Exception as exc:  # try the other exporter, report both if both fail
            errors.append(f"{kind} exporter: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
    raise ExportError("ONNX export failed: " + " | ".join(errors))


def _add_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    onnx = require("onnx", feature="ONNX export")  # optional: the [onnx] extra

    proto = onnx.load(str(path))
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = k
        entry.value = v if isinstance(v, str) else json.dumps(v)
    onnx.save(proto, str(path))


def run_exported(path: str | os.PathLike, x: torch.Tensor, fmt: str | None = None) -> torch.Tensor:
    """Run an exported file on ``x`` (onnxruntime on CPU for ONNX, ``torch.jit.load`` for TorchScript)."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if fmt == "onnx":
        ort = require("onnxruntime", feature="running an ONNX file")  # optional: the [onnx] extra

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(x.detach().cpu())


def verify_export(path: str | os.PathLike, model: nn.Module, inputs: Sequence[torch.Tensor],
                  fmt: str | None = None, references: Sequence[torch.Tensor | None] | None = None) -> float:
    """Largest absolute difference between the exported file and PyTorch over ``inputs``.

    ``references`` may hold PyTorch outputs already computed for some inputs (``None`` = compute).
    Raises :class:`ExportError` when the exported file cannot run an input or returns another shape.
    """
    wrapper = InferenceWrapper(model).eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    worst = 0.0
    references = list(references or [])
    for i, x in enumerate(inputs):
        ref = references[i] if i < len(references) else None
        if ref is None:
            with torch.no_grad():
                ref = wrapper(x.to(dev))
        ref = ref.detach().cpu()  # the exported file runs on the CPU; compare there
        try:
            got = run_exported(path, x, fmt)
        except Exception as exc:
            raise ExportError(f"{path}: the exported model failed on input {tuple(x.shape)}: "
                              f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from exc
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportError(f"{path}: output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)} "
                              f"for input {tuple(x.shape)}")
        worst = max(worst, float((got.float() - ref.float()).abs().max()))
    return worst


def export_model(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, fmt: str = "onnx",
                 dynamic: bool = False, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                 check: bool = True, atol: float = 1e-4, metadata: dict[str, Any] | None = None) -> ExportResult:
    """Export ``model``'s inference path, traced on ``example`` ``(B, C, *spatial)``, to ``path``.

    ``fmt``: ``onnx`` (opset ``opset``; ``exporter`` ``legacy`` = TorchScript-based,
    ``dynamo`` = torch.export-based, ``auto`` = legacy then dynamo) or ``torchscript``
    (``torch.jit.trace``). ``dynamic=True`` marks batch and spatial axes as dynamic. The file
    is written atomically. With ``check`` the result is compared with PyTorch and an
    :class:`ExportError` is raised when the max abs difference exceeds
    ``atol * max(1, max|reference|)``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if exporter not in ("auto", "legacy", "dynamo"):
        raise ValueError(f"exporter must be auto, legacy or dynamo, got {exporter!r}")
    if fmt == "onnx":  # before any work: a missing [onnx] extra is one line naming it
        for mod in ("onnx", "onnxscript", *(("onnxruntime",) if check else ())):
            require(mod, feature="ONNX export")
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        # export (and its check) run on the CPU: a CPU copy keeps the caller's GPU model as it is
        # and gives a file without device-specific constants
        model = copy.deepcopy(model).cpu()
    model = model.eval()
    wrapper = InferenceWrapper(model).eval()
    example = example.detach().float().cpu()
    with torch.no_grad():
        ref_out = wrapper(example)
    tmp, final = _atomic_target(Path(path))
    try:
        if fmt == "onnx":
            used = _export_onnx(wrapper, example, tmp, dynamic, opset, exporter)
            if metadata:
                _add_onnx_metadata(tmp, metadata)
        else:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                try:
                    traced = torch.jit.trace(wrapper, (example,), check_trace=False)
                except Exception as exc:
                    raise ExportError(f"TorchScript tracing failed: {type(exc).__name__}: "
                                      f"{str(exc).strip().splitlines()[0][:300]}") from exc
                extra = {"attnseg.json": json.dumps(metadata)} if metadata else {}
                torch.jit.save(traced, str(tmp), _extra_files=extra)
            used = "jit.trace"
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    result = ExportResult(path=final, fmt=fmt, input_shape=tuple(example.shape),
                          output_shape=tuple(ref_out.shape), exporter=used, dynamic=dynamic)
    if check:
        inputs = [example]
        if dynamic:
            alt = _alternative_shape(model, tuple(example.shape))
            if alt is None:
                result.notes.append("no second input size accepted by the model; dynamic axes checked "
                                    "only at the example size")
            else:
                inputs.append(torch.randn(*alt, generator=torch.Generator().manual_seed(1)))
        result.max_abs_diff = verify_export(final, model, inputs, fmt, references=[ref_out])
        result.checked_shapes = [tuple(x.shape) for x in inputs]
        limit = atol * max(1.0, float(ref_out.abs().max()))
        if result.max_abs_diff > limit:
            raise ExportError(f"{final}: exported outputs differ from PyTorch by {result.max_abs_diff:.3g} "
                              f"(limit {limit:.3g})")
    return result


def example_input(model: nn.Module, ckpt: dict[str, Any] | None = None, input_size: Sequence[int] | None = None,
                  batch_size: int = 1, seed: int = 0, probe_sizes: Sequence[int] = PROBE_SIZES) -> torch.Tensor:
    """A random example input for ``model``: ``(batch_size, C_in, *spatial)``.

    The spatial size is ``input_size`` when given, else the checkpoint's training patch size
    (``ckpt["task"]["patch_size"]``), else the smallest probed size the model accepts.
    """
    task = (ckpt or {}).get("task") or {}
    try:
        in_ch, dims = input_spec(model)
    except ExportError:
        if not (input_size and task.get("in_channels")):
            raise
        in_ch, dims = int(task["in_channels"]), len(input_size)
    in_ch = int(task.get("in_channels") or in_ch)
    if input_size:
        size = tuple(int(s) for s in input_size)
        if len(size) != dims:
            raise ValueError(f"--input-size has {len(size)} values but the model is {dims}D")
    elif task.get("patch_size") and len(task["patch_size"]) == dims:
        size = tuple(int(s) for s in task["patch_size"])
    else:
        size = probe_input_size(model, in_ch, dims, (ckpt or {}).get("model_kwargs"), probe_sizes)
    return torch.randn(batch_size, in_ch, *size, generator=torch.Generator().manual_seed(seed))


def export_checkpoint(checkpoint: str | os.PathLike | dict[str, Any], fmt: str = "onnx",
                      out: str | os.PathLike | None = None, input_size: Sequence[int] | None = None,
                      dynamic: bool = False, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                      batch_size: int = 1, check: bool = True, atol: float = 1e-4) -> ExportResult:
    """Rebuild the model of an attnseg checkpoint and export it (see :func:`export_model`).

    ``out`` defaults to the checkpoint path with suffix ``.onnx`` / ``.ts.pt``. The ONNX file
    carries metadata (``attnseg.model_name``, ``attnseg.model_kwargs``, ``attnseg.task``) so a
    deployment knows how to turn logits into labels; TorchScript stores the same JSON as the
    extra file ``attnseg.json``.
    """
    model, ckpt = build_model_from_checkpoint(checkpoint)
    if out is None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise ValueError("out is required when exporting a checkpoint dict")
        out = Path(checkpoint).with_suffix(".onnx" if fmt == "onnx" else ".ts.pt")
    x = example_input(model, ckpt, input_size, batch_size)
    meta = {"attnseg.model_name": ckpt["model_name"], "attnseg.model_kwargs": ckpt.get("model_kwargs", {}),
            "attnseg.task": ckpt.get("task") or {}, "attnseg.version": str(ckpt.get("attnseg_version", ""))}
    try:
        meta_json = json.loads(json.dumps(meta, default=str))
    except (TypeError, ValueError):
        meta_json = {"attnseg.model_name": ckpt["model_name"]}
    return export_model(model, x, out, fmt, dynamic, opset, exporter, check, atol, metadata=meta_json)


__all__ = ["DEFAULT_OPSET", "FORMATS", "ExportError", "ExportResult", "InferenceWrapper", "example_input",
           "export_checkpoint", "export_model", "input_spec", "probe_input_size", "run_exported",
           "verify_export"]
