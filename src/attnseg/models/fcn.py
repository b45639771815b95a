"""FCN (Long et al. 2015) with 32s / 16s / 8s heads on a residual backbone.

Diagram (backbone stages at strides …, 8, 16, 32 for the default 5 stride-2 stages)::

    x ─ ResidualEncoder ─ … ─ f8 ─ f16 ─ f32 (bottleneck site)
                              │     │     └ score ─ up ┐
                              │     └ skip site ─ score ┴ + ─ up ┐        (16s and 8s)
                              └ skip site ─ score ─────────────── + ─ up  (8s)
                                                                    └ resize to input ─ out

Scores are 1×1 convolutions to the classes; "up" is linear interpolation onto the finer score's
grid (exact for odd sizes; strided convs round up, so any input size works). Skip sites are gated by the
next coarser backbone feature. 2D and 3D. Norm defaults to group norm so that batch size 1 and
1-voxel deep features train (batch/instance norm need more than one value per channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnseg.blocks import check_spatial_dims, conv, resize
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import ResidualEncoder, SegmentationNet, SitePlugins, full_res, level_sizes

_SKIPS = {"32s": 0, "16s": 1, "8s": 2}


class FCN(SegmentationNet):
    """FCN-32s/16s/8s for 2D or 3D.

    Args:
        variant: ``"32s"``, ``"16s"`` or ``"8s"`` (number of finer score maps fused: 0, 1, 2).
        features, blocks, strides: the residual backbone (stem + stages; see
            :class:`attnseg.models._common.ResidualEncoder`).
        norm, act: layer specs.
        attention, attention_kwargs, attention_at, site_attention, input_size: the plug-in
            (sites: encoder, bottleneck, skip).
    """

    sites = ("encoder", "bottleneck", "skip")

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        variant: str = "8s",
        features: Sequence[int] = (16, 32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 2, 2, 2),
        strides: Sequence[int] = (2, 2, 2, 2, 2),
        norm: LayerSpec = ("group", {"num_groups": 8}),
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
        if variant not in _SKIPS:
            raise ValueError(f"variant must be one of {sorted(_SKIPS)}, got {variant!r}")
        n_skip = _SKIPS[variant]
        if len(features) < n_skip + 1:
            raise ValueError(f"FCN-{variant} needs at least {n_skip + 1} backbone stages, got {len(features)}")
        self.in_channels, self.out_channels, self.variant = in_channels, out_channels, variant
        plugins = SitePlugins(attention, attention_kwargs, attention_at, site_attention, self.sites, "fcn")
        sizes = level_sizes(input_size, strides, "ceil")
        self.backbone = ResidualEncoder(spatial_dims, in_channels, features, blocks, strides, norm=norm, act=act,
                                        plugins=plugins, input_size=input_size)
        n = len(features)
        self.skip_levels = [n - 2 - i for i in range(n_skip)]  # coarse to fine
        self.score = conv(spatial_dims, features[-1], out_channels, 1, bias=True)
        self.skip_attn = nn.ModuleList(
            plugins.build("skip", features[k], spatial_dims, gate_channels=features[k + 1], spatial_size=sizes[k + 1])
            for k in self.skip_levels)
        self.skip_scores = nn.ModuleList(conv(spatial_dims, features[k], out_channels, 1, bias=True)
                                         for k in self.skip_levels)

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        feats = self.backbone(x)
        y = self.score(feats[-1])
        for k, attn, score in zip(self.skip_levels, self.skip_attn, self.skip_scores):
            skip = attn(feats[k], feats[k + 1])
            y = score(skip) + resize(y, list(skip.shape[2:]), "linear")
        return {"out": full_res(y, size)}


@register_model(
    "fcn", family="fcn", dims=(2, 3), sites=FCN.sites,
    # tiny configuration for registry-wide tests
    test_kwargs=dict(
        features=(4, 8, 8),
        blocks=(1, 1, 1),
        strides=(2, 2, 2),
        norm=("group", {"num_groups": 2}),
    ),
    test_input=(8, 8, 8),
    description="FCN (Long 2015) 8s/16s/32s score fusion on a residual backbone",
    defaults=dict(spatial_dims=3, in_channels=1, out_channels=2, variant="8s"),
)
def fcn(**kwargs: Any) -> FCN:
    """FCN; see :class:`FCN` for the keyword arguments."""
    return FCN(**kwargs)
