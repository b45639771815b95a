"""DenseUNet (the 2D / 3D halves of H-DenseUNet, Li et al. 2018): a DenseNet encoder with a
U-shaped decoder.

Diagram (L = len(block_layers))::

    x ─ stem ─ enc site ───────────────────────────────────────── skip0 ─ D0 ─ head
          └ transition ─ dense block 1 ─ enc site ─ skip1 ─ … ─ D1 ┘
                          … ─ transition ─ dense block L (bottleneck site) ┘

Dense layer (bottleneck form): ``cat[x, conv3(act(norm(conv1(act(norm(x))))))]`` adding
``growth_rate`` channels; transition: norm → act → 1×1 conv (``compression``) → avg-pool 2.
Decoder stage k: upsample (linear) onto skip k's grid → ``skip`` site (gated by the coarser
tensor) → concat → ConvNormAct 3×3 to skip k's width → ``decoder`` site. Any input size
≥ 2^L works (pooling floors, upsampling lands on the skip grid). 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnseg.blocks import ConvNormAct, check_spatial_dims, conv, pool, resize
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import SegmentationNet, SitePlugins, level_sizes


class DenseLayer(nn.Module):
    """``cat[x, f(x)]`` with f = norm-act-conv1×1 (4·growth) → norm-act-conv3×3 (growth)."""

    def __init__(self, spatial_dims: int, cin: int, growth: int, norm: LayerSpec, act: LayerSpec) -> None:
        super().__init__()
        kw = dict(norm=norm, act=act, order="nac")
        self.body = nn.Sequential(ConvNormAct(spatial_dims, cin, 4 * growth, 1, **kw),
                                  ConvNormAct(spatial_dims, 4 * growth, growth, 3, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseUNet(SegmentationNet):
    """DenseUNet for 2D or 3D.

    Args:
        stem_channels: width of the full-resolution stem conv (level 0).
        growth_rate, block_layers: dense blocks at levels 1 … L (layers per block).
        compression: transition width factor.
        norm, act: layer specs (batch norm + ReLU as in DenseNet).
        attention arguments, input_size: the plug-in (sites: encoder, bottleneck, skip, decoder).
    """

    sites = ("encoder", "decoder", "skip", "bottleneck")

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        stem_channels: int = 32,
        growth_rate: int = 16,
        block_layers: Sequence[int] = (3, 4, 6, 4),
        compression: float = 0.5,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
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
        if not block_layers:
            raise ValueError("DenseUNet needs at least one dense block")
        self.in_channels, self.out_channels = in_channels, out_channels
        n = len(block_layers)
        self.min_size = 2 ** n
        plugins = SitePlugins(attention, attention_kwargs, attention_at, site_attention, self.sites, "denseunet")
        sizes = level_sizes(input_size, [2] * n)
        self.stem = ConvNormAct(spatial_dims, in_channels, stem_channels, 3, norm=norm, act=act)
        widths = [stem_channels]
        self.downs, self.blocks = nn.ModuleList(), nn.ModuleList()
        c = stem_channels
        for layers in block_layers:
            t = max(int(c * compression), 1)
            self.downs.append(nn.Sequential(ConvNormAct(spatial_dims, c, t, 1, norm=norm, act=act, order="nac"),
                                            pool("avg", spatial_dims, 2)))
            c = t
            dense = []
            for _ in range(layers):
                dense.append(DenseLayer(spatial_dims, c, growth_rate, norm, act))
                c += growth_rate
            self.blocks.append(nn.Sequential(*dense))  # empty Sequential = identity
            widths.append(c)
        self.widths = tuple(widths)
        self.encoder_attn = nn.ModuleList(
            plugins.build("bottleneck" if k == n else "encoder", widths[k], spatial_dims, spatial_size=sizes[k])
            for k in range(n + 1))
        self.skip_attn, self.decoders, self.decoder_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        dec = widths[-1]
        for k in range(n - 1, -1, -1):  # deepest first
            self.skip_attn.append(plugins.build("skip", widths[k], spatial_dims, gate_channels=dec,
                                                spatial_size=sizes[k]))
            self.decoders.append(ConvNormAct(spatial_dims, widths[k] + dec, widths[k], 3, norm=norm, act=act))
            self.decoder_attn.append(plugins.build("decoder", widths[k], spatial_dims, spatial_size=sizes[k]))
            dec = widths[k]
        self.feature_channels = widths[0]
        self.head = conv(spatial_dims, widths[0], out_channels, 1, bias=True)

    def _check_input(self, x: torch.Tensor) -> None:
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(f"DenseUNet with {len(self.blocks)} dense blocks needs every spatial size >= "
                             f"{self.min_size}; got {tuple(x.shape[2:])}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final decoder features ``(B, widths[0], *spatial)`` (used by H-DenseUNet's fusion)."""
        x = self.encoder_attn[0](self.stem(x))
        skips = [x]
        for down, block, attn in zip(self.downs, self.blocks, self.encoder_attn[1:]):
            x = attn(block(down(x)))
            skips.append(x)
        x = skips.pop()
        for sattn, dec, dattn in zip(self.skip_attn, self.decoders, self.decoder_attn):
            skip = skips.pop()
            up = resize(x, list(skip.shape[2:]), "linear")
            x = dattn(dec(torch.cat([sattn(skip, x), up], dim=1)))
        return x

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.features(x))}


@register_model(
    "denseunet", family="denseunet", dims=(2, 3), sites=DenseUNet.sites, default_sites=("encoder", "decoder"),
    test_kwargs=dict(stem_channels=8, growth_rate=4, block_layers=(1, 1)),  # tiny configuration for registry-wide tests
    test_input=(8, 8),
    description="DenseUNet (Li 2018, the halves of H-DenseUNet): DenseNet encoder + U-shaped decoder",
    defaults=dict(spatial_dims=2, in_channels=1, out_channels=2),
)
def denseunet(**kwargs: Any) -> DenseUNet:
    """DenseUNet; see :class:`DenseUNet` for the keyword arguments."""
    return DenseUNet(**kwargs)
