"""CBAM (Woo et al., 2018) and ECA (Wang et al., 2020), 2D and 3D."""

from __future__ import annotations

import math

import torch
from torch import nn

from attnseg.attention import register_attention
from attnseg.attention.se import ChannelSE
from attnseg.blocks import check_spatial_dims, conv


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel attention, then spatial attention.

    * channel: ``self.channel`` = :class:`~attnseg.attention.se.ChannelSE` with a shared MLP
      on the average- and max-pooled descriptors (``C → C//r → C``), logits summed, sigmoid;
    * spatial: ``self.spatial`` = a ``k×k(×k)`` convolution ``2 → 1`` on the channel-wise
      mean and max maps, **sigmoid of the convolution output** (the AMIS reference applied the
      sigmoid to the input instead, returning ``x·sigmoid(x)``; fixed here).

    ``use_channel``/``use_spatial`` switch either part off. Shape ``(B, C, *spatial)`` → same.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8, kernel_size: int = 7,
                 use_channel: bool = True, use_spatial: bool = True) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if not (use_channel or use_spatial):
            raise ValueError("CBAM needs at least one of use_channel / use_spatial")
        self.channel = ChannelSE(channels, spatial_dims, reduction, "avg+max") if use_channel else None
        self.spatial = conv(spatial_dims, 2, 1, kernel_size) if use_spatial else None

    def spatial_map(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial attention ``(B, 1, *spatial)`` in (0, 1) for an input ``x``."""
        pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], dim=1)
        return torch.sigmoid(self.spatial(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = x * self.spatial_map(x)
        return x


class EfficientChannelAttention(nn.Module):
    """ECA: global average pool → 1D convolution across channels (kernel ``k``, no bias) →
    sigmoid → scale channels. ``k`` defaults to the nearest odd ``|log2(C)/γ + b/γ|``
    (γ=2, b=1). Shape ``(B, C, *spatial)`` → same; ``k`` parameters.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, kernel_size: int | None = None,
                 gamma: float = 2.0, beta: float = 1.0) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if kernel_size is None:
            t = int(abs(math.log2(max(channels, 1)) / gamma + beta / gamma))
            kernel_size = t if t % 2 else t + 1
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(2).mean(-1).unsqueeze(1)  # (B, 1, C) channel means; the conv runs across channels
        w = torch.sigmoid(self.conv(z))
        return x * w.view(*x.shape[:2], *(1,) * (x.dim() - 2))


@register_attention("cbam", family="channel+spatial",
                    description="CBAM: channel (avg+max MLP) then spatial (k×k conv) attention (Woo 2018)")
def cbam(channels: int, spatial_dims: int = 3, reduction: int = 8, kernel_size: int = 7,
         use_channel: bool = True, use_spatial: bool = True) -> nn.Module:
    return CBAM(channels, spatial_dims, reduction, kernel_size, use_channel, use_spatial)


@register_attention("eca", family="channel",
                    description="Efficient channel attention: 1D conv across pooled channels (Wang 2020)")
def eca(channels: int, spatial_dims: int = 3, kernel_size: int | None = None) -> nn.Module:
    return EfficientChannelAttention(channels, spatial_dims, kernel_size)


