"""DeepMedic (Kamnitsas et al. 2017): a normal-resolution pathway plus subsampled context
pathways, fused by 1×1 convolutions ("fully connected" layers) and a 1×1 classifier.

Diagram (one subsampled pathway, factor f)::

    x ─ centre crop ─ conv×L ─────────────── enc site ─┐
    x ─ avg-pool f ─ conv×L ─ upsample ×f ── enc site ─┴ cat ─ 1×1 FC ×M ─ bottleneck site ─ 1×1 ─ out

Two geometries:

* ``mode="valid"`` (the paper): unpadded k3 convolutions. For L conv layers and largest factor
  F, an input of size S gives an output of size ``O = S - 2·L·F`` centred on the input; O must
  be positive and a multiple of every factor. The normal pathway sees the centre ``O + 2L``
  voxels, pathway f sees the centre ``O + 2·L·f`` voxels pooled by f (its receptive field is
  f times wider). This is the patch-based training / dense-inference layout of the paper.
* ``mode="same"``: padded convolutions, output size = input size (sliding-window use). The
  subsampled pathways pool by f (ceil) and are resized back (nearest) to the input grid.

Residual connections (the paper's improved model) add the output of layer i-2 to layer i for
i in ``residual_at`` (1-based), centre-cropped in valid mode and zero-padded in channels when
narrower. Sites: ``encoder`` (end of every pathway), ``bottleneck`` (after the FC layers).
Works in 2D and 3D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.blocks import ConvNormAct, check_spatial_dims, conv, resize
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import SegmentationNet, SitePlugins


def _center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Centre crop of the spatial dims of ``(B, C, *spatial)`` to ``size``."""
    starts = [(s - t) // 2 for s, t in zip(x.shape[2:], size)]
    return x[(slice(None), slice(None), *(slice(a, a + t) for a, t in zip(starts, size)))]


class _Pathway(nn.Module):
    """L k3 ConvNormAct layers with optional residual additions (layer i += layer i-2)."""

    def __init__(self, spatial_dims: int, cin: int, features: Sequence[int], valid: bool,
                 residual_at: Sequence[int], **kw: Any) -> None:
        super().__init__()
        pad = 0 if valid else None
        self.layers = nn.ModuleList()
        for i, f in enumerate(features):
            self.layers.append(ConvNormAct(spatial_dims, cin if i == 0 else features[i - 1], f, 3, padding=pad, **kw))
        self.residual_at = tuple(i - 1 for i in residual_at if 2 <= i - 1 < len(features))  # 0-based, needs i-2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.residual_at:
                r = outs[i - 2]
                r = _center_crop(r, x.shape[2:])
                if r.shape[1] < x.shape[1]:  # zero-pad channels (paper), never project
                    r = F.pad(r, [0, 0] * (x.dim() - 2) + [0, x.shape[1] - r.shape[1]])
                x = x + r[:, : x.shape[1]]
            outs.append(x)
        return x


class DeepMedic(SegmentationNet):
    """Multi-pathway DeepMedic for 2D or 3D.

    Args:
        features: widths of the L conv layers of every pathway (paper: 30,30,40,40,40,40,50,50).
        fc_features: widths of the 1×1 fusion layers (paper: 150, 150).
        subsample_factors: one subsampled pathway per factor (paper: (3,)); ``()`` = normal only.
        mode: ``"same"`` (default) or ``"valid"`` (the paper; see the module docstring).
        residual_at: 1-based layers receiving a residual from layer i-2 (paper: 4, 6, 8).
        norm, act, order, dropout (FC layers only), attention arguments, input_size: as usual.
    """

    sites = ("encoder", "bottleneck")

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (30, 30, 40, 40, 40, 40, 50, 50),
        fc_features: Sequence[int] = (150, 150),
        subsample_factors: Sequence[int] = (3,),
        mode: str = "same",
        residual_at: Sequence[int] = (4, 6, 8),
        norm: LayerSpec = "batch",
        act: LayerSpec = "prelu_channel",
        order: str = "cna",
        dropout: float = 0.0,
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
        if mode not in ("valid", "same"):
            raise ValueError(f"mode must be 'valid' or 'same', got {mode!r}")
        if any(int(f) < 2 for f in subsample_factors):
            raise ValueError(f"subsample_factors must be >= 2, got {tuple(subsample_factors)}")
        self.in_channels, self.out_channels, self.mode = in_channels, out_channels, mode
        self.factors = tuple(int(f) for f in subsample_factors)
        self.n_layers = len(features)
        self.lcm = math.lcm(*self.factors) if self.factors else 1
        plugins = SitePlugins(attention, attention_kwargs, attention_at, site_attention, self.sites, "deepmedic")
        out_size = self.output_size(input_size) if input_size is not None else None
        kw = dict(norm=norm, act=act, order=order)
        valid = mode == "valid"
        self.pathways = nn.ModuleList(
            _Pathway(spatial_dims, in_channels, features, valid, residual_at, **kw)
            for _ in range(1 + len(self.factors)))
        self.pathway_attn = nn.ModuleList(
            plugins.build("encoder", features[-1], spatial_dims, spatial_size=out_size) for _ in self.pathways)
        fcs, cin = [], features[-1] * len(self.pathways)
        for f in fc_features:
            fcs.append(ConvNormAct(spatial_dims, cin, f, 1, dropout=dropout, order=order + "d", norm=norm, act=act))
            cin = f
        self.fc = nn.Sequential(*fcs)
        self.bottleneck_attn = plugins.build("bottleneck", cin, spatial_dims, spatial_size=out_size)
        self.head = conv(spatial_dims, cin, out_channels, 1, bias=True)

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Output grid for an input grid (valid mode shrinks by ``2·L·max(factor)``)."""
        if self.mode == "same":
            return tuple(int(s) for s in input_size)
        margin = 2 * self.n_layers * max((1, *self.factors))
        return tuple(int(s) - margin for s in input_size)

    def input_size_for(self, output_size: Sequence[int]) -> tuple[int, ...]:
        """Input patch needed for a given output patch in valid mode (inverse of output_size)."""
        if self.mode == "same":
            return tuple(int(s) for s in output_size)
        return tuple(int(s) + 2 * self.n_layers * max((1, *self.factors)) for s in output_size)

    def _check_input(self, x: torch.Tensor) -> None:
        size = tuple(x.shape[2:])
        if self.mode == "valid":
            out = self.output_size(size)
            if min(out) < 1 or any(o % self.lcm for o in out):
                raise ValueError(
                    f"DeepMedic (valid mode, {self.n_layers} layers, factors {self.factors}): input size {size} "
                    f"gives output {out}; every output size must be >= 1 and a multiple of {self.lcm} "
                    f"(input = output + {2 * self.n_layers * max((1, *self.factors))})")
        elif min(size) < max((1, *self.factors)):
            raise ValueError(f"DeepMedic needs every spatial size >= {max(self.factors)}, got {size}")

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        out_size = self.output_size(x.shape[2:])
        feats = []
        if self.mode == "valid":
            normal_in = _center_crop(x, [o + 2 * self.n_layers for o in out_size])
        else:
            normal_in = x
        feats.append(self.pathway_attn[0](self.pathways[0](normal_in)))
        for f, path, attn in zip(self.factors, self.pathways[1:], self.pathway_attn[1:]):
            if self.mode == "valid":
                xi = _center_crop(x, [o + 2 * self.n_layers * f for o in out_size])
                xi = _avg_pool(xi, f, ceil=False)
            else:
                xi = _avg_pool(x, f, ceil=True)
            y = path(xi)
            feats.append(attn(resize(y, list(out_size), "nearest")))
        z = self.bottleneck_attn(self.fc(torch.cat(feats, dim=1)))
        return {"out": self.head(z)}


def _avg_pool(x: torch.Tensor, f: int, ceil: bool) -> torch.Tensor:
    fn = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
    return fn(x, f, f, ceil_mode=ceil)


@register_model(
    "deepmedic", family="deepmedic", dims=(2, 3), sites=DeepMedic.sites,
    # tiny configuration for registry-wide tests
    test_kwargs=dict(
        features=(4, 4, 6, 6),
        fc_features=(8,),
        residual_at=(4,),
    ),
    test_input=(9, 9, 9),
    description="DeepMedic (Kamnitsas 2017): normal + subsampled context pathways, 1x1 fusion; valid or same mode",
    defaults=dict(spatial_dims=3, in_channels=1, out_channels=2, mode="same"),
)
def deepmedic(**kwargs: Any) -> DeepMedic:
    """DeepMedic; see :class:`DeepMedic` for the keyword arguments."""
    return DeepMedic(**kwargs)
