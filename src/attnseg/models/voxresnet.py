"""VoxResNet (Chen et al. 2016/2018): a deep voxel-wise residual network with auxiliary
classifiers at every stage, fused (summed) into the output.

Diagram (4 stages by default, features (32, 64, 64, 64))::

    x ─ conv ─ norm-act-conv ─────────────────────────── h1 ─ C1 ─┐
          └ norm-act-conv s2 ─ VoxRes×B ──────────────── h2 ─ C2 ─┤
                └ norm-act-conv s2 ─ VoxRes×B ────────── h3 ─ C3 ─┼ sum ─ out
                      └ norm-act-conv s2 ─ VoxRes×B ──── h4 ─ C4 ─┘

VoxRes module (pre-activation): ``x + conv(act(norm(conv(act(norm(x))))))``.
Classifier Ck: norm → act → 1×1 conv to the classes → transposed conv (kernel = stride =
2^(k-1)) back to the input grid, cropped to the input size. In training mode the four
classifier logits are returned as ``aux1`` … ``aux4`` (full resolution, for the paper's deep
supervision) next to ``out`` (their sum). Any input size ≥ 2^(stages-1) works; 2D and 3D.
Sites: ``encoder`` (every stage but the last), ``bottleneck`` (the last stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnseg.blocks import ConvNormAct, check_spatial_dims, conv, conv_transpose
from attnseg.blocks import act as make_act
from attnseg.blocks import norm as make_norm
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import SegmentationNet, SitePlugins, level_sizes


class VoxRes(nn.Module):
    """Pre-activation residual module ``x + f(x)`` with f = (norm, act, conv) × 2."""

    def __init__(self, spatial_dims: int, channels: int, norm: LayerSpec, act: LayerSpec) -> None:
        super().__init__()
        kw = dict(norm=norm, act=act, order="nac")
        self.body = nn.Sequential(ConvNormAct(spatial_dims, channels, channels, 3, **kw),
                                  ConvNormAct(spatial_dims, channels, channels, 3, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Classifier(nn.Module):
    """norm → act → 1×1 conv to classes → transposed conv ×scale (scale 1: none)."""

    def __init__(self, spatial_dims: int, cin: int, classes: int, scale: int, norm: LayerSpec,
                 act: LayerSpec) -> None:
        super().__init__()
        self.pre = nn.Sequential(make_norm(norm, spatial_dims, cin), make_act(act, cin))
        self.score = conv(spatial_dims, cin, classes, 1, bias=True)
        self.up = conv_transpose(spatial_dims, classes, classes, scale, scale) if scale > 1 else nn.Identity()

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        y = self.up(self.score(self.pre(x)))
        return y[(slice(None), slice(None), *(slice(0, int(s)) for s in size))]


class VoxResNet(SegmentationNet):
    """VoxResNet for 2D or 3D.

    Args:
        features: width per stage (paper: 32, 64, 64, 64); stage k > 0 is at 1/2^k size.
        blocks: VoxRes modules per stage k > 0 (paper: 2).
        norm, act: layer specs (paper: batch norm, ReLU).
        attention, attention_kwargs, attention_at, site_attention, input_size: the plug-in.
    """

    sites = ("encoder", "bottleneck")

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 64, 64),
        blocks: int = 2,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
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
        n = len(features)
        if n < 1:
            raise ValueError("VoxResNet needs at least one stage")
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, tuple(features)
        self.min_size = 2 ** (n - 1)
        plugins = SitePlugins(attention, attention_kwargs, attention_at, site_attention, self.sites, "voxresnet")
        sizes = level_sizes(input_size, [2] * (n - 1), "ceil")
        stages = [nn.Sequential(
            ConvNormAct(spatial_dims, in_channels, features[0], 3, order="c"),
            ConvNormAct(spatial_dims, features[0], features[0], 3, norm=norm, act=act, order="nac"))]
        for k in range(1, n):
            stages.append(nn.Sequential(
                ConvNormAct(spatial_dims, features[k - 1], features[k], 3, 2, norm=norm, act=act, order="nac"),
                *[VoxRes(spatial_dims, features[k], norm, act) for _ in range(blocks)]))
        self.stages = nn.ModuleList(stages)
        self.stage_attn = nn.ModuleList(
            plugins.build("bottleneck" if k == n - 1 else "encoder", features[k], spatial_dims,
                          spatial_size=sizes[k]) for k in range(n))
        self.classifiers = nn.ModuleList(
            _Classifier(spatial_dims, features[k], out_channels, 2 ** k, norm, act) for k in range(n))

    def _check_input(self, x: torch.Tensor) -> None:
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(f"VoxResNet with {len(self.features)} stages needs every spatial size >= "
                             f"{self.min_size}; got {tuple(x.shape[2:])}")

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        outs: dict[str, torch.Tensor] = {}
        total = None
        for k, (stage, attn, clf) in enumerate(zip(self.stages, self.stage_attn, self.classifiers)):
            x = attn(stage(x))
            y = clf(x, size)
            total = y if total is None else total + y
            if aux:
                outs[f"aux{k + 1}"] = y
        outs["out"] = total
        return outs


@register_model(
    "voxresnet", family="voxresnet", dims=(2, 3), sites=VoxResNet.sites,
    test_kwargs=dict(features=(4, 8, 8), blocks=1),  # tiny configuration for registry-wide tests
    test_input=(8, 8, 8), aux_outputs=("aux1", "aux2", "aux3"),  # one auxiliary classifier per stage
    description="VoxResNet (Chen 2018): VoxRes modules, auxiliary classifiers at every stage summed at the output",
    defaults=dict(spatial_dims=3, in_channels=1, out_channels=2),
)
def voxresnet(**kwargs: Any) -> VoxResNet:
    """VoxResNet; see :class:`VoxResNet` for the keyword arguments."""
    return VoxResNet(**kwargs)
