"""U-Net for 2D (Ronneberger et al. 2015) and 3D (Çiçek et al. 2016).

Diagram (L = len(features) levels, level k has ``features[k]`` channels at 1/2^k size)::

    x ─ E0 ───────────────────────────── skip0 ─ D0 ─ head ─ out
          └ pool ─ E1 ──────────── skip1 ─ D1 ┘        (level1 head if deep_supervision)
                     └ pool ─ … ─ E(L-1) = bottleneck ┘

Encoder stage: [pool] → conv → conv → ``encoder`` site (the deepest stage: ``bottleneck`` site).
Decoder stage k: upsample the coarser tensor g to skip k's grid → ``skip`` site on skip k
(gates get g) → concat ``[skip, up]`` → conv → conv → ``decoder`` site.

Any input size works (upsampling lands exactly on the skip grid, so odd sizes are absorbed) as
long as every size is ≥ 2^(L-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnseg.blocks import ConvNormAct, Upsample, check_spatial_dims, conv, pool
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import SegmentationNet, SitePlugins, full_res, level_sizes


class _DoubleConv(nn.Sequential):
    """Two ConvNormAct units ``in → mid → out`` (children ``conv1``, ``conv2``)."""

    def __init__(self, spatial_dims: int, cin: int, mid: int, cout: int, k: int, **kw: Any) -> None:
        super().__init__()
        self.add_module("conv1", ConvNormAct(spatial_dims, cin, mid, k, **kw))
        self.add_module("conv2", ConvNormAct(spatial_dims, mid, cout, k, **kw))


class UNet(SegmentationNet):
    """Generic 2D/3D U-Net.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: input modalities and classes.
        features: channels per level, finest first (the last one is the bottleneck).
        kernel_size: convolution kernel.
        norm, act, order: layer specs (see :class:`attnseg.blocks.ConvNormAct`).
        conv_bias: bias on every conv (``None``: only when no norm follows the conv).
        encoder_mid: width of the first encoder conv: ``"out"`` (in → out → out, Ronneberger) or
            ``"half"`` (in → max(out//2, in) → out, Çiçek and the AMIS reference).
        upsample: ``"deconv"`` (transposed conv k2 s2 to the skip width), ``"nearest"`` or
            ``"linear"`` (interpolation, the decoder conv sees ``skip + coarse`` channels).
        deep_supervision: add 1×1 heads on decoder levels 1 … L-2; their logits are resized to
            the input size and returned as ``level1`` … in training mode.
        dropout: channel dropout after each conv.
        attention, attention_kwargs, attention_at, site_attention: the attention plug-in.
        input_size: spatial input size, when known (size-bound attention needs it).
        eval_activation, pad_input: see :class:`SegmentationNet`.
    """

    sites = ("encoder", "decoder", "skip", "bottleneck")

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        kernel_size: int = 3,
        norm: LayerSpec = ("instance", {"affine": True}),
        act: LayerSpec = ("leakyrelu", {"negative_slope": 0.01}),
        order: str = "cna",
        conv_bias: bool | None = None,
        encoder_mid: str = "out",
        upsample: str = "deconv",
        deep_supervision: bool = False,
        dropout: float = 0.0,
        attention: str | Sequence[str] | None = None,
        attention_kwargs: Any = None,
        attention_at: str | Sequence[str] = ("encoder", "decoder"),
        site_attention: dict[str, dict[str, Any]] | None = None,
        input_size: Sequence[int] | None = None,
        eval_activation: str | None = None,
        pad_input: bool = False,
    ) -> None:
        super().__init__(eval_activation, pad_input)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if len(features) < 2:
            raise ValueError(f"UNet needs at least 2 levels, got features={tuple(features)}")
        if encoder_mid not in ("out", "half"):
            raise ValueError(f"encoder_mid must be 'out' or 'half', got {encoder_mid!r}")
        if upsample not in ("deconv", "nearest", "linear"):
            raise ValueError(f"upsample must be deconv, nearest or linear, got {upsample!r}")
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, tuple(features)
        self.upsample_mode, self.deep_supervision = upsample, deep_supervision
        self.min_size = 2 ** (len(features) - 1)
        plugins = SitePlugins(attention, attention_kwargs, attention_at, site_attention, self.sites, "unet")
        sizes = level_sizes(input_size, [2] * (len(features) - 1))
        kw = dict(norm=norm, act=act, order=order, bias=conv_bias, dropout=dropout)
        n = len(features)

        self.pool = pool("max", spatial_dims, 2)
        self.encoders = nn.ModuleList()
        self.encoder_attn = nn.ModuleList()
        cin = in_channels
        for k, f in enumerate(features):
            mid = max(f // 2, cin) if encoder_mid == "half" else f
            self.encoders.append(_DoubleConv(spatial_dims, cin, mid, f, kernel_size, **kw))
            site = "bottleneck" if k == n - 1 else "encoder"
            self.encoder_attn.append(plugins.build(site, f, spatial_dims, spatial_size=sizes[k]))
            cin = f

        self.ups = nn.ModuleList()
        self.skip_attn = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.decoder_attn = nn.ModuleList()
        for k in range(n - 2, -1, -1):  # deepest decoder first
            coarse, f = features[k + 1], features[k]
            if upsample == "deconv":
                self.ups.append(Upsample(spatial_dims, coarse, f, 2, mode="deconv", bias=True))
                up_ch = f
            else:
                self.ups.append(Upsample(spatial_dims, coarse, coarse, 2, mode="interp", interp=upsample))
                up_ch = coarse
            self.skip_attn.append(plugins.build("skip", f, spatial_dims, gate_channels=coarse,
                                                spatial_size=sizes[k]))
            self.decoders.append(_DoubleConv(spatial_dims, f + up_ch, f, f, kernel_size, **kw))
            self.decoder_attn.append(plugins.build("decoder", f, spatial_dims, spatial_size=sizes[k]))
        self.head = conv(spatial_dims, features[0], out_channels, 1, bias=True)
        # deep-supervision heads on decoder levels n-2 … 1 (same order as self.decoders[:-1])
        self.ds_heads = nn.ModuleList(
            conv(spatial_dims, features[k], out_channels, 1, bias=True) for k in range(n - 2, 0, -1)
        ) if deep_supervision else nn.ModuleList()

    def _check_input(self, x: torch.Tensor) -> None:
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(f"UNet with {len(self.features)} levels needs every spatial size >= "
                             f"{self.min_size}; got {tuple(x.shape[2:])}")

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        skips = []
        for k, (enc, attn) in enumerate(zip(self.encoders, self.encoder_attn)):
            if k > 0:
                x = self.pool(x)
            x = attn(enc(x))
            skips.append(x)
        x = skips.pop()
        outs: dict[str, torch.Tensor] = {}
        n = len(self.decoders)
        for i, (up, sattn, dec, dattn) in enumerate(zip(self.ups, self.skip_attn, self.decoders, self.decoder_attn)):
            skip = skips.pop()
            g = x
            y = up(x, list(skip.shape[2:]))
            x = dattn(dec(torch.cat([sattn(skip, g), y], dim=1)))
            if aux and self.deep_supervision and i < n - 1:
                level = n - 1 - i
                head = self.ds_heads[i](x)
                # ds_native_size (set by the trainer for loss.deep_supervision.mode downsample_target):
                # the head at its own grid, the loss resizes the target instead
                outs[f"level{level}"] = head if getattr(self, "ds_native_size", False) else full_res(head, size)
        outs["out"] = self.head(x)
        return outs


@register_model(
    "unet", family="unet", dims=(2, 3), sites=UNet.sites, default_sites=("encoder", "decoder"),
    test_kwargs=dict(features=(4, 8, 8)),  # tiny configuration for registry-wide tests
    test_input=(8, 8, 8),
    description="U-Net (Ronneberger 2015 / Çiçek 2016): configurable levels, widths, upsampling, deep supervision",
    defaults=dict(spatial_dims=3, in_channels=1, out_channels=2, features=(16, 32, 64, 128, 256)),
)
def unet(**kwargs: Any) -> UNet:
    """Generic 2D/3D U-Net; see :class:`UNet` for the keyword arguments."""
    return UNet(**kwargs)
