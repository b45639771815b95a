"""The AttentionBased-MIS (AMIS) reference networks as presets of the generic ``unet`` and
``vnet`` plus attention plug-ins (reference description: ``seed-models.md`` §4–§6).

Every preset is the generic backbone with the reference's layer grammar — conv (with bias) →
PReLU (one slope per channel) → instance norm (affine), order ``"can"`` — its widths, and its
attention placed through :class:`attnseg.attention.plugin.AttentionPlugin`:

=============  ========  ==================================================  ===========
preset         backbone  attention (sites)                                   upsampling
=============  ========  ==================================================  ===========
unet3d         unet      none                                                nearest
PEunet3d       unet      pe (encoder + bottleneck)                           trilinear
cSEunet3d      unet      cse (encoder, bottleneck, decoder)                  nearest
scSEunet3d     unet      slice → cse (encoder, bottleneck, decoder)          nearest
csSEunet3d     unet      cse → slice (encoder, bottleneck, decoder)          nearest
agscSEunet3d   unet      pam (encoder, bottleneck, decoder)                  trilinear
vnet-ref       vnet      none                                                deconv
cSEvnet        vnet      cse (encoder, bottleneck, decoder)                  deconv
csSEvnet       vnet      cse → slice (encoder, decoder); cse (bottleneck)    deconv
scSEvnet       vnet      slice → cse (encoder, decoder); cse (bottleneck)    deconv
agscSEvnet     vnet      pam (encoder, decoder); cse (bottleneck)            deconv
=============  ========  ==================================================  ===========

Reference quirks reproduced: the U-Net's 4th encoder is the bottleneck (so it gets the
attention), decoder input is ``cat[skip, up]``; the V-Net bottleneck is a single conv, the
decoder residual identity is the upsampled tensor, the reference's pooling bugs
(``reference_quirks=True`` in the slice / PAM modules). Slice attention is bound to the
``depth`` (the input must have exactly that many slices, any H and W). Outputs are logits
(the library convention); ``eval_activation="softmax"`` reproduces the reference's eval-mode
softmax exactly. Deviations of the reference that are *not* reproduced: the per-channel Python
loops and in-place writes (vectorised here), batch size 1 only (any batch works here), the
multi-GPU ``device`` split, and the HVSMR heat-map file side effect.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from attnseg.models import register_model
from attnseg.models.unet import UNet
from attnseg.models.vnet import VNet

_POOL = {"avg": "avg", "max": "max", "avg_and_max": "avg+max", "avg+max": "avg+max"}
_LAYERS = dict(spatial_dims=3, norm=("instance", {"affine": True}), act="prelu_channel", order="can", conv_bias=True)


def _pool(name: str) -> str:
    if name not in _POOL:
        raise ValueError(f"pooling must be avg, max or avg_and_max, got {name!r}")
    return _POOL[name]


def _features(init_features: int, levels: int) -> tuple[int, ...]:
    return tuple(init_features * 2 ** k for k in range(levels))


def _slice_kw(reduction: int, pooling: str, clamp: bool = True) -> dict[str, Any]:
    return {"form": "fixed", "reduction": reduction, "clamp_reduction": clamp, "pooling": _pool(pooling),
            "reference_quirks": True}


def _attention(kind: str, slice_reduction: int, channel_reduction: int, slice_pooling: str,
               channel_pooling: str) -> dict[str, Any]:
    """Plug-in arguments for one AMIS attention flavour (sites excluded)."""
    cse = {"reduction": channel_reduction, "pooling": _pool(channel_pooling)}
    if kind == "cse":
        return {"attention": "cse", "attention_kwargs": cse}
    if kind == "scse":  # slice SE, then channel SE
        return {"attention": ["slice", "cse"], "attention_kwargs": [_slice_kw(slice_reduction, slice_pooling), cse]}
    if kind == "csse":  # channel SE, then slice SE
        return {"attention": ["cse", "slice"], "attention_kwargs": [cse, _slice_kw(slice_reduction, slice_pooling)]}
    if kind == "pam":
        return {"attention": "pam", "attention_kwargs": {
            "form": "fixed", "slice_reduction": slice_reduction, "channel_reduction": channel_reduction,
            "clamp_reduction": False, "slice_pooling": _pool(slice_pooling), "channel_pooling": _pool(channel_pooling),
            "reference_quirks": True}}
    raise ValueError(f"unknown AMIS attention flavour {kind!r}")


def _unet3d(kind: str | None, upsample: str, sites: tuple[str, ...], *, in_channels: int = 1,
            out_channels: int = 11, depth: int = 144, init_features: int = 16, levels: int = 4,
            slice_reduction: int = 16, channel_reduction: int = 8, slice_pooling: str = "avg",
            channel_pooling: str = "avg", **overrides: Any) -> UNet:
    kw: dict[str, Any] = dict(_LAYERS, in_channels=in_channels, out_channels=out_channels,
                              features=_features(init_features, levels), encoder_mid="half", upsample=upsample,
                              input_size=(depth, None, None))
    if kind == "pe":
        kw.update(attention="pe", attention_kwargs={"reduction": channel_reduction}, attention_at=sites)
    elif kind is not None:
        kw.update(_attention(kind, slice_reduction, channel_reduction, slice_pooling, channel_pooling),
                  attention_at=sites)
    kw.update(overrides)
    return UNet(**kw)


def _vnet(kind: str | None, *, in_channels: int = 1, out_channels: int = 11, depth: int = 144,
          init_features: int = 16, levels: int = 4, slice_reduction: int = 8, channel_reduction: int = 4,
          slice_pooling: str = "avg", channel_pooling: str = "avg", **overrides: Any) -> VNet:
    # reference widths: residual stage k has init·2^k / 2 channels, the bottleneck init·2^(levels-1)
    features = tuple(f // 2 for f in _features(init_features, levels)) + (init_features * 2 ** (levels - 1),)
    kw: dict[str, Any] = dict(_LAYERS, in_channels=in_channels, out_channels=out_channels, features=features,
                              repeats=tuple(min(k + 1, 3) for k in range(levels)), bottleneck="single",
                              kernel_size=5, input_size=(depth, None, None))
    bottleneck_cse = {"attention": "cse", "attention_kwargs": {"reduction": channel_reduction,
                                                               "pooling": _pool(channel_pooling)}}
    if kind == "cse":
        kw.update(_attention("cse", slice_reduction, channel_reduction, slice_pooling, channel_pooling),
                  attention_at=("encoder", "bottleneck", "decoder"))
    elif kind is not None:
        kw.update(_attention(kind, slice_reduction, channel_reduction, slice_pooling, channel_pooling),
                  attention_at=("encoder", "decoder"), site_attention={"bottleneck": bottleneck_cse})
    kw.update(overrides)
    return VNet(**kw)


_ALL = ("encoder", "bottleneck", "decoder")
_UNET_DOC = ("keyword arguments: in_channels=1, out_channels=11, depth=144, init_features=16, levels=4, "
             "slice_reduction=16, channel_reduction=8, slice_pooling='avg', channel_pooling='avg', plus any "
             "generic unet keyword (e.g. eval_activation='softmax')")
_VNET_DOC = _UNET_DOC.replace("slice_reduction=16, channel_reduction=8", "slice_reduction=8, channel_reduction=4")

#: preset name → (backbone, builder); the single source for the registry, the converter and docs
PRESETS: dict[str, tuple[str, Any]] = {
    "unet3d": ("unet", lambda **kw: _unet3d(None, "nearest", (), **kw)),
    "PEunet3d": ("unet", lambda **kw: _unet3d("pe", "linear", ("encoder", "bottleneck"),
                                              **{"channel_reduction": 2, **kw})),
    "cSEunet3d": ("unet", lambda **kw: _unet3d("cse", "nearest", _ALL, **kw)),
    "scSEunet3d": ("unet", lambda **kw: _unet3d("scse", "nearest", _ALL, **kw)),
    "csSEunet3d": ("unet", lambda **kw: _unet3d("csse", "nearest", _ALL, **kw)),
    "agscSEunet3d": ("unet", lambda **kw: _unet3d("pam", "linear", _ALL, **kw)),
    "vnet-ref": ("vnet", lambda **kw: _vnet(None, **kw)),
    "cSEvnet": ("vnet", lambda **kw: _vnet("cse", **{"channel_reduction": 8, **kw})),
    "csSEvnet": ("vnet", lambda **kw: _vnet("csse", **kw)),
    "scSEvnet": ("vnet", lambda **kw: _vnet("scse", **kw)),
    "agscSEvnet": ("vnet", lambda **kw: _vnet("pam", **kw)),
}

#: parameter counts of the reference implementation at the defaults (seed-models.md §0)
REFERENCE_PARAMS: dict[str, int] = {
    "unet3d": 1_022_259, "PEunet3d": 1_044_499, "cSEunet3d": 1_029_439, "scSEunet3d": 1_189_343,
    "csSEunet3d": 1_189_343, "agscSEunet3d": 1_189_343, "vnet-ref": 6_883_755, "cSEvnet": 6_890_985,
    "csSEvnet": 7_060_215, "scSEvnet": 7_060_215, "agscSEvnet": 7_060_215,
}

_DESCRIPTIONS = {
    "unet3d": "AMIS UNet3D", "PEunet3d": "AMIS PE-UNet3D (project & excite in the encoder)",
    "cSEunet3d": "AMIS cSE-UNet3D (channel SE)", "scSEunet3d": "AMIS scSE-UNet3D (slice SE → channel SE)",
    "csSEunet3d": "AMIS csSE-UNet3D (channel SE → slice SE)", "agscSEunet3d": "AMIS agscSE-UNet3D (PAM)",
    "vnet-ref": "AMIS VNet (reference layout)", "cSEvnet": "AMIS cSE-VNet (channel SE)",
    "csSEvnet": "AMIS csSE-VNet (channel → slice SE)", "scSEvnet": "AMIS scSE-VNet (slice → channel SE)",
    "agscSEvnet": "AMIS agscSE-VNet (PAM)",
}


def _register(name: str, backbone: str, builder: Any) -> None:
    def build(**kwargs: Any) -> nn.Module:
        return builder(**kwargs)

    build.__doc__ = f"{_DESCRIPTIONS[name]} preset of the generic {backbone}; " + (
        _UNET_DOC if backbone == "unet" else _VNET_DOC)
    # test configuration: 16 slices; the V-Net presets' 5 levels need multiples of 16 and 2+ voxels at 1/16
    vnet = backbone == "vnet"
    register_model(name, family="amis", dims=(3,), preset_of=backbone, width_arg="init_features",
                   test_kwargs={"init_features": 4, "depth": 16}, test_input=(16, 32, 32) if vnet else (16, 16, 16),
                   divisor=16 if vnet else 1,
                   description=f"{_DESCRIPTIONS[name]}: preset of '{backbone}' at the reference defaults")(build)


for _name, (_backbone, _builder) in PRESETS.items():
    _register(_name, _backbone, _builder)
