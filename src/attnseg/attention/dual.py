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
    Exact DANet attention is quadratic in the number of voxels (48³ positions would need
    1.2·10¹⁰ scores), so with ``max_tokens`` the input is average-pooled (kernel = stride =
    the smallest ``p`` with at most ``max_tokens`` positions left, ``ceil_mode``) before the
    convolutions. With ``pool_queries=True`` (default) queries are pooled too and the
    attention output ``γ·V·Aᵀ`` is interpolated (linear) back to the input size: the
    attention then costs ``M²·C`` instead of ``N·M·C`` and the module stays memory-bound.
    ``pool_queries=False`` keeps one query per voxel (full-resolution output, ``N·M·C``);
    ``max_tokens=None`` is the exact form.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8, max_tokens: int | None = 512,
                 pool_queries: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        qk = max(channels // reduction, 1)
        self.query = conv(spatial_dims, channels, qk, kernel_size=1)
        self.key = conv(spatial_dims, channels, qk, kernel_size=1)
        self.value = conv(spatial_dims, channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.max_tokens = max_tokens
        self.pool_queries = pool_queries

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``γ · V·softmax(QᵀK)ᵀ`` at the input's size (what the module adds to ``x``)."""
        kv = x
        if self.max_tokens is not None:
            p = _pool_factor(list(x.shape[2:]), self.max_tokens)
            if p > 1:
                pool = F.avg_pool3d if self.spatial_dims == 3 else F.avg_pool2d
                kv = pool(x, p, p, ceil_mode=True)
        qx = kv if self.pool_queries else x
        q = self.query(qx).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, c')
        k = self.key(kv).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, M, c')
        v = self.value(kv).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, M, C)
        # unscaled dot-product attention as in DANet; SDPA's fused (flash) kernels avoid
        # materialising the N×M scores but need one head size: zero-padding the query/key
        # features to the value size leaves every dot product unchanged (~4× faster on CPU)
        if q.shape[-1] < v.shape[-1]:
            pad = (0, v.shape[-1] - q.shape[-1])
            q, k = F.pad(q, pad), F.pad(k, pad)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        # γ is applied on the (small) pooled result, before the interpolation
        out = (self.gamma * out.squeeze(1)).transpose(1, 2).reshape(*qx.shape[:2], *qx.shape[2:])
        if out.shape[2:] != x.shape[2:]:
            out = F.interpolate(out, size=x.shape[2:], mode="trilinear" if self.spatial_dims == 3 else "bilinear",
                                align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)


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
        # x + (γ·A) X in one pass over the full-size tensors (γ scales the C×C matrix)
        return torch.baddbmm(f, self.gamma * attn, f).view(x.shape)


class DualAttention(nn.Module):
    """Position and channel self-attention in parallel, summed:
    ``y = x + γ_p·P(x) + γ_c·C(x)`` (each branch's residual counted once), so a fresh module
    is the identity. Shape ``(B, C, *spatial)`` → same. ``max_tokens`` / ``pool_queries``:
    see :class:`PositionAttention`.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8,
                 max_tokens: int | None = 512, pool_queries: bool = True) -> None:
        super().__init__()
        self.position = PositionAttention(channels, spatial_dims, reduction, max_tokens, pool_queries)
        self.channel = ChannelSelfAttention(channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(x) + self.position.delta(x)


@register_attention("dual", family="self-attention", aliases=("danet",),
                    description="DANet position + channel self-attention (pooled to max_tokens positions)")
def dual(channels: int, spatial_dims: int = 3, reduction: int = 8, max_tokens: int | None = 512,
         pool_queries: bool = True) -> nn.Module:
    return DualAttention(channels, spatial_dims, reduction, max_tokens, pool_queries)
