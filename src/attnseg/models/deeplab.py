"""DeepLabV3+ (Chen et al. 2018): atrous residual backbone (output stride 16 or 8), ASPP and a
decoder that fuses low-level (stride-4) features.

Diagram::

    x ─ ResidualEncoder ─ f4 (low level) ─ … ─ f_os (dilated, bottleneck… see below)
                             │                      └ ASPP ─ bottleneck site ─┐
                             └ 1×1 ─ skip site (g = ASPP output) ─ cat[low, up(ASPP)]
                                                 └ 3×3 ─ 3×3 ─ decoder site ─ 1×1 ─ resize ─ out

ASPP: a 1×1 branch, one dilated 3×3 branch per rate, and image pooling (global average →
1×1 conv → act, no norm so it works on one value per channel), concatenated and projected by
a 1×1 conv. The rates default to (6, 12, 18) at output stride 16 and are doubled at output
stride 8, as in the paper; small medical inputs may prefer smaller ``aspp_rates``.
Backbone stages reaching the output stride switch from stride to dilation. Any input size
works (strided convs round up); 2D and 3D. The ``encoder`` site covers backbone stages, the
``bottleneck`` site the ASPP output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnseg.blocks import ConvNormAct, check_spatial_dims, conv, resize
from attnseg.blocks import act as make_act
from attnseg.blocks import dropout as make_dropout
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import ResidualEncoder, SegmentationNet, SitePlugins, full_res, level_sizes


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``(B, cin, *s)`` → ``(B, cout, *s)``."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, rates: Sequence[int], norm: LayerSpec,
                 act: LayerSpec, drop: float = 0.1) -> None:
        super().__init__()
        kw = dict(norm=norm, act=act)
        self.branches = nn.ModuleList(
            [ConvNormAct(spatial_dims, cin, cout, 1, **kw)]
            + [ConvNormAct(spatial_dims, cin, cout, 3, dilation=r, **kw) for r in rates])
        self.pool_conv = conv(spatial_dims, cin, cout, 1, bias=True)
        self.pool_act = make_act(act, cout)
        self.project = ConvNormAct(spatial_dims, cout * (len(rates) + 2), cout, 1, **kw)
        self.drop = make_dropout(spatial_dims, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        pooled = self.pool_act(self.pool_conv(pooled)).expand(-1, -1, *x.shape[2:])
        ys = [b(x) for b in self.branches] + [pooled]
        return self.drop(self.project(torch.cat(ys, dim=1)))


class DeepLabV3Plus(SegmentationNet):
    """DeepLabV3+ for 2D or 3D.

    Args:
        output_stride: 16 or 8.
        features, blocks: residual backbone (stem + 4 stages by default; the stem and first
            stage bring stride 4 = the low-level features).
        aspp_channels, aspp_rates: ASPP width and dilation rates (``None``: paper rates).
        low_level_channels: width of the projected low-level features (paper: 48).
        norm, act: layer specs (group norm by default: works with batch size 1).
        attention arguments, input_size: the plug-in (sites: encoder, bottleneck, skip, decoder).
    """

    sites = ("encoder", "bottleneck", "skip", "decoder")

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        output_stride: int = 16,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 2, 2, 2),
        aspp_channels: int = 64,
        aspp_rates: Sequence[int] | None = None,
        low_level_channels: int = 24,
        norm: LayerSpec = ("group", {"num_groups": 8}),
        act: LayerSpec = "relu",
        aspp_dropout: float = 0.1,
        attention: str | Sequence[str] | None = None,
        attention_kwargs: Any = None,
        attention_at: str | Sequence[str] = ("encoder",),
        site_attention: dict[str, dict[str, Any]] | None = None,
        input_size: Sequence[int] | None = None,
        eval_activation: str | None = None,
        pad_input: bool = False,
    ) -> None:
        super().__init__(eval_activation, pad_input)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        n = len(features)
        if n < 3:
            raise ValueError(f"DeepLabV3+ needs at least 3 backbone stages, got {n}")
        self.in_channels, self.out_channels, self.output_stride = in_channels, out_channels, output_stride
        strides, dilations, total, dil = [], [], 1, 1
        for _ in range(n):  # stride 2 until the output stride is reached, then dilate instead
            if total < output_stride:
                strides.append(2)
                total *= 2
                dilations.append(1)
            else:
                strides.append(1)
                dil *= 2
                dilations.append(dil)
        rates = tuple(aspp_rates) if aspp_rates is not None else ((6, 12, 18) if output_stride == 16 else (12, 24, 36))
        plugins = SitePlugins(attention, attention_kwargs, attention_at, site_attention, self.sites, "deeplabv3plus")
        sizes = level_sizes(input_size, strides, "ceil")
        self.backbone = ResidualEncoder(spatial_dims, in_channels, features, blocks, strides, dilations,
                                        norm=norm, act=act, plugins=plugins, input_size=input_size)
        self.aspp = ASPP(spatial_dims, features[-1], aspp_channels, rates, norm, act, aspp_dropout)
        self.aspp_attn = plugins.build("bottleneck", aspp_channels, spatial_dims, spatial_size=sizes[-1])
        self.low_index = 1  # stem (stride 2) + first stage (stride 4)
        self.low_proj = ConvNormAct(spatial_dims, features[self.low_index], low_level_channels, 1, norm=norm, act=act)
        self.skip_attn = plugins.build("skip", low_level_channels, spatial_dims, gate_channels=aspp_channels,
                                       spatial_size=sizes[self.low_index + 1])
        self.decoder = nn.Sequential(
            ConvNormAct(spatial_dims, low_level_channels + aspp_channels, aspp_channels, 3, norm=norm, act=act),
            ConvNormAct(spatial_dims, aspp_channels, aspp_channels, 3, norm=norm, act=act))
        self.decoder_attn = plugins.build("decoder", aspp_channels, spatial_dims,
                                          spatial_size=sizes[self.low_index + 1])
        self.head = conv(spatial_dims, aspp_channels, out_channels, 1, bias=True)

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        feats = self.backbone(x)
        a = self.aspp_attn(self.aspp(feats[-1]))
        low = self.skip_attn(self.low_proj(feats[self.low_index]), a)
        y = torch.cat([low, resize(a, list(low.shape[2:]), "linear")], dim=1)
        y = self.decoder_attn(self.decoder(y))
        return {"out": full_res(self.head(y), size)}


@register_model(
    "deeplabv3plus", family="deeplab", dims=(2, 3), sites=DeepLabV3Plus.sites, aliases=("deeplab",),
    # tiny configuration for registry-wide tests
    test_kwargs=dict(
        features=(4, 8, 8, 8),
        blocks=(1, 1, 1, 1),
        aspp_channels=8,
        low_level_channels=4,
        aspp_rates=(1, 2),
        output_stride=8,
        norm=("group", {"num_groups": 2}),
    ),
    test_input=(8, 8, 8),
    description="DeepLabV3+ (Chen 2018): atrous residual backbone (OS 8/16), ASPP, low-level decoder",
    defaults=dict(spatial_dims=3, in_channels=1, out_channels=2, output_stride=16),
)
def deeplabv3plus(**kwargs: Any) -> DeepLabV3Plus:
    """DeepLabV3+; see :class:`DeepLabV3Plus` for the keyword arguments."""
    return DeepLabV3Plus(**kwargs)
