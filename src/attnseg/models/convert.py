"""Checkpoint converters: checkpoints of other code bases → attnseg models and checkpoints.

A converter is a function registered under a source name::

    @register_converter("panet-reference")
    def convert(checkpoint: dict, arch: str | None = None, **model_kwargs) -> ConvertedCheckpoint: ...

It receives the loaded checkpoint object (a dict of tensors and plain containers, loaded with
``weights_only=True``), the architecture name (the converter's own names and/or registered model
names) and model keyword overrides, and returns a :class:`ConvertedCheckpoint` (registered
model name, its keyword arguments, and a state dict in attnseg names that loads strictly).
:func:`convert_checkpoint` runs one and writes an attnseg checkpoint (see
:mod:`attnseg.runtime.checkpoint`) atomically; :func:`load_reference_checkpoint` returns the model.

Converters defined here: ``panet-reference`` (checkpoints of the Prior Attention Network
reference code, hsiangyuzhao/PANet: a dict whose ``net`` entry is the state dict).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnseg.models import create_model, get_model_entry
from attnseg.models.checkpoint import model_checkpoint, unwrap_state_dict
from attnseg.runtime.checkpoint import load_checkpoint, save_checkpoint

ConverterFn = Callable[..., "ConvertedCheckpoint"]
CONVERTERS: dict[str, ConverterFn] = {}


@dataclass
class ConvertedCheckpoint:
    """Result of a converter: enough to rebuild the model with ``create_model`` and load it."""

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    #: facts about the source (format name, epoch, dropped keys, ...); plain values only
    source: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The attnseg model with the converted weights loaded strictly, in eval mode."""
        model = create_model(self.model_name, **self.model_kwargs)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


def register_converter(name: str) -> Callable[[ConverterFn], ConverterFn]:
    """Decorator registering a checkpoint converter under ``name`` (e.g. ``"panet-reference"``)."""

    def deco(fn: ConverterFn) -> ConverterFn:
        if name in CONVERTERS:
            raise ValueError(f"checkpoint converter {name!r} is already registered")
        CONVERTERS[name] = fn
        return fn

    return deco


def list_converters() -> list[str]:
    return sorted(CONVERTERS)


def get_converter(name: str) -> ConverterFn:
    if name not in CONVERTERS:
        raise KeyError(f"unknown checkpoint source {name!r}; known: {', '.join(list_converters()) or 'none'}")
    return CONVERTERS[name]


def _load_source(src: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(src, Mapping):
        return dict(src), "<dict>"

    return load_checkpoint(src), str(src)


def convert(source_name: str, src: str | os.PathLike | Mapping[str, Any], arch: str | None = None,
            **model_kwargs: Any) -> ConvertedCheckpoint:
    """Run converter ``source_name`` on a checkpoint file (or an already loaded dict)."""
    fn = get_converter(source_name)
    ckpt, where = _load_source(src)
    try:
        result = fn(ckpt, arch, **model_kwargs)
    except (KeyError, ValueError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ValueError(f"{where}: cannot convert from {source_name}: {msg}") from exc
    result.source.setdefault("converter", source_name)
    if where != "<dict>":
        result.source.setdefault("path", os.path.abspath(where))
    return result


def convert_checkpoint(source_name: str, in_path: str | os.PathLike, out_path: str | os.PathLike,
                       arch: str | None = None, **model_kwargs: Any) -> ConvertedCheckpoint:
    """Convert ``in_path`` with converter ``source_name`` and write an attnseg checkpoint
    ``{"model", "model_name", "model_kwargs", "attnseg_version", "format", "source"}`` to
    ``out_path`` atomically. The weights are verified by building the model and loading them
    strictly before anything is written."""
    result = convert(source_name, in_path, arch, **model_kwargs)
    result.build()  # strict load: fail before writing anything
    save_checkpoint(model_checkpoint(result.model_name, result.model_kwargs, result.state_dict,
                                     source=result.source), out_path)
    return result


def load_reference_checkpoint(path: str | os.PathLike | Mapping[str, Any], arch: str = "panet",
                              source: str = "panet-reference", **model_kwargs: Any) -> nn.Module:
    """Build the attnseg model equivalent to a reference checkpoint, in eval mode.

    ``path``: a checkpoint file of the reference training script (dict with ``net``), or such a
    dict, or a bare state dict. ``arch``: reference model name (``unet``, ``attention``,
    ``enhanced``, ``cascade``, ``panet``/``fuse``) or attnseg name (``unet-res``, ...).
    The configuration (channels, classes, norm, activation, deconv, prior head) is read from the
    weights; ``strides`` cannot be and defaults to the BraTS ``(1, 2, 2, 2, 2)``. Keyword
    arguments override; ``reference_layout=False`` drops the never-used reference parameters.
    """
    return convert(source, path, arch, **model_kwargs).build()


# ----------------------------------------------------------------------------------------------
# PANet reference

#: reference model names (train.py / inference.py ``--model``) → registered attnseg models
PANET_ARCHS = {
    "unet": "unet-res",
    "attention": "attention-unet-res",
    "enhanced": "enhanced-unet",
    "cascade": "cascaded-unet",
    "panet": "prior-attention-net",
    "fuse": "prior-attention-net",
}


def _panet_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = ckpt.get("net", ckpt)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("expected a reference checkpoint (dict with a 'net' state dict) or a state dict")
    return unwrap_state_dict(dict(state), ("module.",))  # DataParallel wrappers


def infer_panet_config(state: Mapping[str, torch.Tensor], arch: str) -> dict[str, Any]:
    """Model keyword arguments that the reference weights determine (all but ``strides``)."""
    base = "second_stage." if arch == "cascaded-unet" else ""
    stem = f"{base}backbone.conv0_0."
    if f"{stem}identity_mapping.conv.weight" not in state:
        if f"{stem}0.weight" in state:
            raise ValueError("the reference's GROUP-norm variant (plain convolution stem) is not supported")
        raise ValueError(f"missing '{stem}identity_mapping.conv.weight': not a PANet reference state dict "
                         f"for architecture {arch!r}")
    w0 = state[f"{stem}identity_mapping.conv.weight"]
    channels = tuple(int(state[f"{base}backbone.conv{i}_0.identity_mapping.conv.weight"].shape[0]) for i in range(5))
    if f"{stem}conv1.norm.running_mean" in state:
        norm = "batch"
    elif f"{stem}conv1.norm.weight" in state:
        raise ValueError("normalisation with affine parameters but no running statistics (GROUP norm or "
                         "affine instance norm) is not a reference configuration")
    else:
        norm = "instance"
    cfg: dict[str, Any] = {
        "spatial_dims": w0.dim() - 2,
        "in_channels": int(w0.shape[1]),
        "out_channels": int(state[f"{base}convds0.weight"].shape[0]),
        "features": channels,
        "norm": norm,
        "act": "prelu" if f"{stem}act.weight" in state else "relu",
        "use_deconv": f"{base}up4_3.trans_conv.weight" in state,
        # head and gates are built with the reference ConvNorm defaults
        "head_norm": "batch",
        "head_act": "prelu",
    }
    if arch in ("prior-attention-net", "panet-brats"):
        cfg["head"] = "parallel" if "one_stage.conv5_0.conv.weight" in state else "fcn"
    return cfg


@register_converter("panet-reference")
def convert_panet_reference(ckpt: dict[str, Any], arch: str | None = None, **model_kwargs: Any) -> ConvertedCheckpoint:
    """Reference PANet checkpoint → attnseg PANet-family state dict (exact, key by key)."""
    arch = arch or "panet"
    name = PANET_ARCHS.get(arch, arch)
    entry = get_model_entry(name)
    if entry.family != "panet":
        raise ValueError(f"architecture {arch!r} is not a PANet-family model; use one of "
                         f"{sorted(PANET_ARCHS)} or a registered panet model")
    name = entry.name
    state = _panet_state(ckpt)
    kwargs = {**entry.defaults, **infer_panet_config(state, name), **model_kwargs}
    clean = not kwargs.get("reference_layout", True)
    # the reference-layout twin has every reference tensor; the clean layout is a subset of it
    twin = create_model(name, **{**kwargs, "reference_layout": True})
    to_ref = {k: twin.reference_key(k) for k in twin.state_dict()}
    ours_by_ref = {r: k for k, r in to_ref.items() if r is not None}
    missing = sorted(set(ours_by_ref) - set(state))
    unexpected = sorted(set(state) - set(ours_by_ref))
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not match {name} with {_short(kwargs)}: "
                         f"missing {len(missing)} {missing[:5]}, unexpected {len(unexpected)} {unexpected[:5]}")
    twin_state = twin.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ref_key, ours in ours_by_ref.items():
        t = state[ref_key]
        if tuple(t.shape) != tuple(twin_state[ours].shape):
            raise ValueError(f"{ref_key}: shape {tuple(t.shape)} does not fit {ours} "
                             f"{tuple(twin_state[ours].shape)} (wrong strides/arch?)")
        out[ours] = t.detach().clone()
    dropped: list[str] = []
    if clean:
        target_keys = set(create_model(name, **kwargs).state_dict())
        extra = sorted(set(out) - target_keys)
        not_unused = [k for k in extra if "unused" not in k]
        if not_unused:
            raise ValueError(f"clean layout would drop used parameters {not_unused[:5]}")
        dropped = [to_ref[k] for k in extra]
        out = {k: v for k, v in out.items() if k in target_keys}
    # keys without a reference counterpart (attention plug-in sites) keep their initial values
    for k, v in twin.state_dict().items():
        if to_ref[k] is None and k not in out:
            out[k] = v
    meta = {"format": "panet-reference", "arch": arch, "dropped_unused": dropped}
    for key in ("epoch",):
        if isinstance(ckpt.get(key), (int, float)):
            meta[key] = ckpt[key]
    return ConvertedCheckpoint(name, _plain(kwargs), out, meta)


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as plain containers (weights_only-loadable)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


def _short(kwargs: dict[str, Any]) -> str:
    keys = ("in_channels", "out_channels", "features", "strides", "use_deconv", "head")
    return ", ".join(f"{k}={kwargs[k]}" for k in keys if k in kwargs)
