"""Checkpoints of the AttentionBased-MIS reference → the AMIS presets.

The reference training script saves the raw ``state_dict()`` of its network
(``<epoch>_net_<Name>.pth``). :func:`convert_amis_state_dict` maps its key names onto the
matching preset (see :mod:`attnseg.models.amis_presets`); :func:`convert_amis_reference` is
registered as the ``amis-reference`` converter of ``attnseg convert-checkpoint``.

Key layout of the reference (facts from its ``models/networks.py``):

* U-Net family: ``EncoderLayer{1..4}`` / ``DecoderLayer{1..3}`` with
  ``basic_module.Conv{1,2}.{conv,pReLU,instancenorm}``, attention ``encoder_cSE`` /
  ``encoder_sSE`` / ``pe_layer`` (decoders: ``decoder_*``), head ``final_conv``.
* V-Net family: ``Encoder_layer{1..4}.conv_layer.convblock.{i}`` (a flat Sequential of
  conv, PReLU — absent after the last conv — and instance norm per repetition),
  ``conv_layer.final_nolinear_activation``, ``downsample_layer.{conv,pReLU,instancenorm}``,
  ``Bottleneck_layer.*``, ``Bottleneck_cSE``, ``Decoder_layer{1..4}.upsample_layer.
  {convtranspose3d,pReLU,instancenorm}``, attention ``cSE`` / ``sSE``, head ``final_conv``.
* Slice SE sites hold one module per channel (``Slice_SE_encoder.{c}.fc.{0,2}``); they are
  stacked into the vectorised slice module by the attention package's loaders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attnseg.attention.slice import load_reference_channel_weights, load_reference_slice_weights
from attnseg.models.amis_presets import PRESETS
from attnseg.models.convert import ConvertedCheckpoint

# reference attention names per preset: (channel-SE key, slice-SE key, order in our chain)
_UNET_ATT = {"cSEunet3d": ("cSE",), "scSEunet3d": ("sSE", "cSE"), "csSEunet3d": ("cSE", "sSE"),
             "agscSEunet3d": ("pam",), "PEunet3d": ("pe",), "unet3d": ()}
_VNET_ATT = {"cSEvnet": ("cSE",), "scSEvnet": ("sSE", "cSE"), "csSEvnet": ("cSE", "sSE"),
             "agscSEvnet": ("pam",), "vnet-ref": ()}


def _strip_module_prefix(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"reference state dict entry {k!r} is not a tensor; expected a raw state dict")
        out[k[7:] if k.startswith("module.") else k] = v  # DataParallel wrapper
    return out


def infer_amis_preset(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Preset name from the key names alone, or ``None`` when ambiguous (slice variants share keys)."""
    keys = " ".join(sd)
    if "EncoderLayer1." in keys:
        if "pe_layer" in keys:
            return "PEunet3d"
        if "encoder_sSE" in keys:
            return None
        return "cSEunet3d" if "encoder_cSE" in keys else "unet3d"
    if "Encoder_layer1." in keys:
        if ".sSE." in keys:
            return None
        return "cSEvnet" if "Bottleneck_cSE" in keys else "vnet-ref"
    return None


def infer_amis_kwargs(sd: Mapping[str, torch.Tensor], preset: str) -> dict[str, Any]:
    """``in_channels``, ``out_channels``, ``init_features``, ``levels`` and (slice variants)
    ``depth`` read from tensor shapes."""
    kw: dict[str, Any] = {"out_channels": int(sd["final_conv.weight"].shape[0])}
    if PRESETS[preset][0] == "unet":
        first = sd["EncoderLayer1.basic_module.Conv1.conv.weight"]
        kw["in_channels"] = int(first.shape[1])
        kw["init_features"] = int(sd["EncoderLayer1.basic_module.Conv2.conv.weight"].shape[0])
        kw["levels"] = len({m.group(1) for k in sd if (m := re.match(r"EncoderLayer(\d+)\.", k))})
        slice_key = "EncoderLayer1.encoder_sSE.Slice_SE_encoder.0.fc.2.weight"
    else:
        first = sd["Encoder_layer1.conv_layer.convblock.0.weight"]
        kw["in_channels"] = int(first.shape[1])
        kw["init_features"] = 2 * int(first.shape[0])
        kw["levels"] = len({m.group(1) for k in sd if (m := re.match(r"Encoder_layer(\d+)\.", k))})
        slice_key = "Encoder_layer1.sSE.Slice_SE_encoder.0.fc.2.weight"
    if slice_key in sd:
        kw["depth"] = int(sd[slice_key].shape[0])
    return kw


def _copy(dst: nn.Module, name: str, src: Mapping[str, torch.Tensor], key: str, used: set[str]) -> None:
    param = dict(dst.named_parameters()).get(name)
    if key not in src:
        raise KeyError(f"reference state dict has no key {key!r} (needed for {name})")
    if param is None or param.shape != src[key].shape:
        raise ValueError(f"{key}: reference shape {tuple(src[key].shape)} does not match attnseg parameter {name} "
                         f"{None if param is None else tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(src[key])
    used.add(key)


def _cna(model: nn.Module, ours: str, src: Mapping[str, torch.Tensor], theirs: dict[str, str], used: set[str]) -> None:
    """Copy one ConvNormAct (``conv``/``act``/``norm`` children) from reference sub-keys."""
    for child, ref in theirs.items():
        for attr in ("weight", "bias"):
            key = f"{ref}.{attr}"
            if key in src:
                _copy(model, f"{ours}.{child}.{attr}", src, key, used)


def _attention(site: nn.Module, kinds: tuple[str, ...], src: Mapping[str, torch.Tensor], prefix: str,
               names: dict[str, str], used: set[str]) -> None:
    """Load the reference attention of one site into our AttentionSite ``site``."""
    if not kinds:
        return
    mod = site.attn
    parts = list(mod) if isinstance(mod, nn.Sequential) else [mod]
    for kind, part in zip(kinds, parts):
        if kind == "pe":
            for ours, theirs in (("conv1", "conv_c"), ("act", "relu"), ("conv2", "conv_cT")):
                for attr in ("weight", "bias"):
                    key = f"{prefix}{names['pe']}.{theirs}.{attr}"
                    if key in src:
                        _copy(part, f"{ours}.{attr}", src, key, used)
            continue
        if kind in ("sSE", "pam"):
            load_reference_slice_weights(part, src, f"{prefix}{names['sSE']}.")
            used.update(k for k in src if k.startswith(f"{prefix}{names['sSE']}."))
        if kind in ("cSE", "pam"):
            load_reference_channel_weights(part, src, f"{prefix}{names['cSE']}.")
            used.update(k for k in src if k.startswith(f"{prefix}{names['cSE']}."))


def convert_amis_state_dict(ref_state_dict: Mapping[str, Any], preset: str | None = None,
                            **preset_kwargs: Any) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Reference raw state dict → ``(preset, preset kwargs, attnseg state dict)``.

    ``preset`` may be omitted when the keys identify it (all but the slice variants, whose keys
    coincide). Model sizes (channels, widths, levels, depth) are read from the tensors;
    ``preset_kwargs`` override them (e.g. ``channel_reduction``). Raises ``ValueError`` on
    unknown presets, unused reference keys or shape mismatches, ``KeyError`` on missing keys.
    """
    src = _strip_module_prefix(ref_state_dict)
    if preset is None:
        preset = infer_amis_preset(src)
        if preset is None:
            raise ValueError("cannot tell the AMIS preset from the keys (slice-attention variants share key "
                             f"names); pass it explicitly, one of {sorted(PRESETS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown AMIS preset {preset!r}; choose from {sorted(PRESETS)}")
    kwargs = {**infer_amis_kwargs(src, preset), **preset_kwargs}
    backbone, builder = PRESETS[preset]
    model = builder(**kwargs)
    used: set[str] = set()
    if backbone == "unet":
        kinds = _UNET_ATT[preset]
        for i in range(1, len(model.encoders) + 1):
            for c in ("conv1", "conv2"):
                ref = f"EncoderLayer{i}.basic_module.{c.capitalize()}"
                _cna(model, f"encoders.{i - 1}.{c}", src, {"conv": f"{ref}.conv", "act": f"{ref}.pReLU",
                                                           "norm": f"{ref}.instancenorm"}, used)
            _attention(model.encoder_attn[i - 1], kinds, src, f"EncoderLayer{i}.",
                       {"cSE": "encoder_cSE", "sSE": "encoder_sSE", "pe": "pe_layer"}, used)
        for j in range(1, len(model.decoders) + 1):
            for c in ("conv1", "conv2"):
                ref = f"DecoderLayer{j}.basic_module.{c.capitalize()}"
                _cna(model, f"decoders.{j - 1}.{c}", src, {"conv": f"{ref}.conv", "act": f"{ref}.pReLU",
                                                           "norm": f"{ref}.instancenorm"}, used)
            if model.decoder_attn[j - 1].attn is not None:
                _attention(model.decoder_attn[j - 1], kinds, src, f"DecoderLayer{j}.",
                           {"cSE": "decoder_cSE", "sSE": "decoder_sSE", "pe": "pe_layer"}, used)
    else:
        kinds = _VNET_ATT[preset]
        names = {"cSE": "cSE", "sSE": "sSE"}

        def stage(ours: str, ref: str, n_convs: int) -> None:
            idx = 0
            for i in range(n_convs):
                theirs = {"conv": f"{ref}.convblock.{idx}"}
                idx += 1
                if i < n_convs - 1:
                    theirs["act"] = f"{ref}.convblock.{idx}"
                    idx += 1
                theirs["norm"] = f"{ref}.convblock.{idx}"
                idx += 1
                _cna(model, f"{ours}.convs.{i}", src, theirs, used)
            _copy(model, f"{ours}.act.weight", src, f"{ref}.final_nolinear_activation.weight", used)

        for k, enc in enumerate(model.encoders, start=1):
            stage(f"encoders.{k - 1}", f"Encoder_layer{k}.conv_layer", len(enc.convs))
            ref = f"Encoder_layer{k}.downsample_layer"
            _cna(model, f"downs.{k - 1}", src, {"conv": f"{ref}.conv", "act": f"{ref}.pReLU",
                                                "norm": f"{ref}.instancenorm"}, used)
            _attention(model.encoder_attn[k - 1], kinds, src, f"Encoder_layer{k}.", names, used)
        _cna(model, "bottleneck", src, {"conv": "Bottleneck_layer.conv", "act": "Bottleneck_layer.pReLU",
                                        "norm": "Bottleneck_layer.instancenorm"}, used)
        if model.bottleneck_attn.attn is not None:
            _attention(model.bottleneck_attn, ("cSE",), src, "", {"cSE": "Bottleneck_cSE"}, used)
        for j, dec in enumerate(model.decoders, start=1):
            ref = f"Decoder_layer{j}.upsample_layer"
            _cna(model, f"ups.{j - 1}", src, {"conv": f"{ref}.convtranspose3d", "act": f"{ref}.pReLU",
                                              "norm": f"{ref}.instancenorm"}, used)
            stage(f"decoders.{j - 1}", f"Decoder_layer{j}.conv_layer", len(dec.convs))
            _attention(model.decoder_attn[j - 1], kinds, src, f"Decoder_layer{j}.", names, used)
    _copy(model, "head.weight", src, "final_conv.weight", used)
    _copy(model, "head.bias", src, "final_conv.bias", used)
    unused = sorted(set(src) - used)
    if unused:
        raise ValueError(f"{len(unused)} reference keys have no place in preset {preset!r} "
                         f"(wrong preset or options?): {unused[:6]}{' …' if len(unused) > 6 else ''}")
    n_ref = sum(v.numel() for v in src.values() if v.is_floating_point())
    n_ours = sum(p.numel() for p in model.parameters())
    if n_ref != n_ours:
        raise ValueError(f"preset {preset!r} has {n_ours} parameters but the reference state dict holds {n_ref}")
    return preset, kwargs, {k: v.detach().clone() for k, v in model.state_dict().items()}


def convert_amis_reference(ckpt: Mapping[str, Any], arch: str | None = None, **model_kwargs: Any) -> Any:
    """``amis-reference`` converter: raw reference state dict → :class:`ConvertedCheckpoint`."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if arch == "vnet":  # the reference's --model name; ours is vnet-ref
        arch = "vnet-ref"
    preset, kwargs, state = convert_amis_state_dict(sd, arch, **model_kwargs)
    return ConvertedCheckpoint(preset, kwargs, state, source={"format": "amis-reference", "preset": preset})


try:  # the converter registry lives in attnseg.models.convert
    from attnseg.models.convert import register_converter
except ImportError:  # pragma: no cover - older trees without the converter registry
    register_converter = None
if register_converter is not None:
    register_converter("amis-reference")(convert_amis_reference)
