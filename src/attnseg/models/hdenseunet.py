"""H-DenseUNet (Li et al. 2018): a 2D DenseUNet on slices, a 3D DenseUNet on the volume plus
the 2D prediction, and hybrid feature fusion (HFF).

Diagram::

    x (B,C,D,H,W) ─ slices with ±context neighbours as channels ─ 2D DenseUNet ─ f2d, p2d
    cat[x, p2d] ─ 3D DenseUNet ─ f3d
    z = f3d + proj(f2d) ─ ConvNormAct 3×3 ─ 1×1 ─ out              (HFF layer)

The 2D network sees every slice along D with ``context`` neighbours on each side stacked as
channels (edge slices repeat), as the paper's 3-slice input; slices are batched, never looped.
``aux2d`` (training mode) holds the 2D logits in volume layout ``(B, classes, D, H, W)`` for
the paper's 2D loss. **3D only** (the design fuses a 2D and a 3D network); the 2D half alone is
the registered ``denseunet`` with ``spatial_dims=2``. The attention plug-in arguments are given
to both halves (2D modules in the 2D net, 3D in the 3D net); ``input_size`` is ``(D, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.blocks import ConvNormAct, conv
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import SegmentationNet
from attnseg.models.denseunet import DenseUNet


class HDenseUNet(SegmentationNet):
    """H-DenseUNet (3D input).

    Args:
        context: neighbouring slices on each side fed to the 2D net (paper: 1 → 3 slices).
        stem_channels_2d, growth_2d, blocks_2d: the 2D DenseUNet (paper: DenseNet-161 sized).
        stem_channels_3d, growth_3d, blocks_3d: the 3D DenseUNet.
        fusion_channels: width of the HFF convolution.
        norm, act, dropout (before the HFF classifier; paper 0.3): layer specs.
        attention arguments, input_size ``(D, H, W)``: passed to both halves.
    """

    sites = DenseUNet.sites

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        context: int = 1,
        stem_channels_2d: int = 32,
        growth_2d: int = 16,
        blocks_2d: Sequence[int] = (3, 4, 6, 4),
        stem_channels_3d: int = 16,
        growth_3d: int = 8,
        blocks_3d: Sequence[int] = (2, 3, 3),
        fusion_channels: int = 32,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
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
        if spatial_dims != 3:
            raise ValueError("hdenseunet is 3D only (it fuses a 2D slice network with a 3D network); "
                             "use 'denseunet' with spatial_dims=2 for a 2D DenseUNet")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.spatial_dims, self.in_channels, self.out_channels, self.context = 3, in_channels, out_channels, context
        att = dict(attention=attention, attention_kwargs=attention_kwargs, attention_at=attention_at,
                   site_attention=site_attention)
        self.net2d = DenseUNet(2, in_channels * (2 * context + 1), out_channels, stem_channels_2d, growth_2d,
                               blocks_2d, norm=norm, act=act, input_size=None if input_size is None
                               else tuple(input_size)[1:], **att)
        self.net3d = DenseUNet(3, in_channels + out_channels, out_channels, stem_channels_3d, growth_3d, blocks_3d,
                               norm=norm, act=act, input_size=input_size, **att)
        f2, f3 = self.net2d.feature_channels, self.net3d.feature_channels
        self.proj2d = nn.Identity() if f2 == f3 else conv(3, f2, f3, 1, bias=False)
        self.fusion = ConvNormAct(3, f3, fusion_channels, 3, norm=norm, act=act, dropout=dropout, order="cnad")
        self.head = conv(3, fusion_channels, out_channels, 1, bias=True)
        del self.net3d.head  # the 3D half only provides features; the HFF head classifies

    def _check_input(self, x: torch.Tensor) -> None:
        self.net2d._check_input(x[:, :, 0])
        self.net3d._check_input(x)

    def _slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` → ``(B·D, C·(2k+1), H, W)``: each slice with k neighbours per side."""
        b, c, d, h, w = x.shape
        k = self.context
        if k:
            x = F.pad(x, (0, 0, 0, 0, k, k), mode="replicate")
        # 2k+1 shifted views (a loop over offsets, not slices); (B, C, 2k+1, D, H, W)
        win = torch.stack([x[:, :, i:i + d] for i in range(2 * k + 1)], dim=2)
        return win.permute(0, 3, 1, 2, 4, 5).reshape(b * d, c * (2 * k + 1), h, w)

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        b, _, d, h, w = x.shape
        f2 = self.net2d.features(self._slices(x))
        p2 = self.net2d.head(f2)
        to_vol = lambda t: t.reshape(b, d, t.shape[1], h, w).transpose(1, 2)  # noqa: E731
        f2, p2 = to_vol(f2), to_vol(p2)
        f3 = self.net3d.features(torch.cat([x, p2], dim=1))
        out = self.head(self.fusion(f3 + self.proj2d(f2)))
        return {"out": out, "aux2d": p2} if aux else {"out": out}


@register_model(
    "hdenseunet", family="denseunet", dims=(3,), sites=HDenseUNet.sites, default_sites=("encoder", "decoder"),
    # tiny configuration for registry-wide tests
    test_kwargs=dict(
        stem_channels_2d=8,
        growth_2d=4,
        blocks_2d=(1, 1),
        stem_channels_3d=8,
        growth_3d=4,
        blocks_3d=(1,),
        fusion_channels=4,
    ),
    test_input=(8, 8, 8), aux_outputs=("aux2d",),  # the 2D network's logits, supervised in training
    description="H-DenseUNet (Li 2018): 2D DenseUNet on slices + 3D DenseUNet + hybrid feature fusion (3D only)",
    defaults=dict(spatial_dims=3, in_channels=1, out_channels=2),
)
def hdenseunet(**kwargs: Any) -> HDenseUNet:
    """H-DenseUNet; see :class:`HDenseUNet` for the keyword arguments."""
    return HDenseUNet(**kwargs)
