"""Dual attention (DANet, Fu et al., 2019): position and channel self-attention, 2D and 3D."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.attention import register_attention
from attnseg.blocks import check_spatial_dims, conv


def _pool_factor(size: list[int], max_tokens: int) -> int:
    """Smallest integer factor ``p`` with ``Π ceil(s / p) <= max_tokens``."""
    p = 1
    while math.prod(-(-s // p) for s in size) > max_tokens:
        p += 1
    return p


class PositionAttention(nn.Module):
    """DANet position attention: ``y = x + γ · V·softmax(QᵀK)ᵀ`` over spatial positions.

    ``query``/``key`` are 1×1 convs ``C → C//r``, ``value`` ``C → C``; ``γ`` starts at 0.
    Keys and values are average-pooled (kernel = stride = ``p``, ``ceil_mode``) so that at
    most ``max_tokens`` key positions remain — full N×N attention is quadratic and
    infeasible on 3D volumes (48³ positions would need 1.2·10¹⁰ scores); ``max_tokens=None``
    gives the exact DANet form. Queries keep full resolution, so the output does too.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8, max_tokens: int | None = 512) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        qk = max(channels // reduction, 1)
        self.query = conv(spatial_dims, channels, qk, kernel_size=1)
        self.key = conv(spatial_dims, channels, qk, kernel_size=1)
        self.value = conv(spatial_dims, channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.max_tokens = max_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        kv = x
        if self.max_tokens is not None:
            p = _pool_factor(list(x.shape[2:]), self.max_tokens)
            if p > 1:
                pool = F.avg_pool3d if self.spatial_dims == 3 else F.avg_pool2d
                kv = pool(x, p, p, ceil_mode=True)
        q = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, c')
        k = self.key(kv).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, M, c')
        v = self.value(kv).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, M, C)
        # unscaled dot-product attention as in DANet; SDPA's fused (flash) kernels avoid
        # materialising the N×M scores but need one head size: zero-padding the query/key
        # features to the value size leaves every dot product unchanged (~4× faster on CPU)
        if q.shape[-1] < v.shape[-1]:
            pad = (0, v.shape[-1] - q.shape[-1])
            q, k = F.pad(q, pad), F.pad(k, pad)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return x + self.gamma * out.squeeze(1).transpose(1, 2).reshape(x.shape)


class ChannelSelfAttention(nn.Module):
    """DANet channel attention: ``A = softmax(rowmax(XXᵀ) − XXᵀ)`` (C×C), ``y = x + γ·A X``;
    ``γ`` starts at 0. No parameters besides ``γ``."""

    def __init__(self, channels: int = 0, spatial_dims: int = 3) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(2)  # (B, C, N)
        energy = f @ f.transpose(1, 2)
        attn = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
        return x + self.gamma * (attn @ f).view(x.shape)


class DualAttention(nn.Module):
    """Position and channel self-attention in parallel, summed:
    ``y = x + γ_p·P(x) + γ_c·C(x)`` (each branch's residual counted once), so a fresh module
    is the identity. Shape ``(B, C, *spatial)`` → same.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8,
                 max_tokens: int | None = 512) -> None:
        super().__init__()
        self.position = PositionAttention(channels, spatial_dims, reduction, max_tokens)
        self.channel = ChannelSelfAttention(channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.position(x) + self.channel(x) - x


@register_attention("dual", family="self-attention", aliases=("danet",),
                    description="DANet position + channel self-attention (keys pooled to max_tokens)")
def dual(channels: int, spatial_dims: int = 3, reduction: int = 8, max_tokens: int | None = 512) -> nn.Module:
    return DualAttention(channels, spatial_dims, reduction, max_tokens)
