"""Dual attention (DANet, Fu et al., 2019): position and channel self-attention, 2D and 3D."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=128)
def _pool_matrix(n: int, p: int) -> torch.Tensor:
    """``(ceil(n/p), n)`` float64 matrix of ``avg_pool1d(kernel=stride=p, ceil_mode=True)``
    along one axis (the last window averages only the voxels inside the input, as PyTorch)."""
    m = torch.zeros(-(-n // p), n, dtype=torch.float64)
    for i in range(m.shape[0]):  # built once per (n, p): a loop over matrix rows, not over data
        start, end = i * p, min(i * p + p, n)
        m[i, start:end] = 1.0 / (end - start)
    return m


@functools.lru_cache(maxsize=128)
def _linear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float64 matrix of 1-D linear interpolation with
    ``align_corners=False`` to a given size (PyTorch's source-index rule: ``(d + 0.5)·in/out
    - 0.5`` clamped at 0, the upper neighbour clamped at ``in - 1``)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    for d in range(n_out):  # built once per size pair
        src = max(scale * (d + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        frac = src - i0
        m[d, i0] += 1.0 - frac
        m[d, i1] += frac
    return m


@functools.lru_cache(maxsize=256)
def _matrix_on(kind: str, a: int, b: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`_pool_matrix` (``kind="pool"``) or :func:`_linear_matrix` already on ``device`` in
    ``dtype``: kept there, so a GPU forward does not copy the small matrix from the CPU each time."""
    m = _pool_matrix(a, b) if kind == "pool" else _linear_matrix(a, b)
    return m.to(device=device, dtype=dtype)


def _separable(x: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """Apply one ``(out_k, in_k)`` matrix along each spatial axis ``k`` of ``x`` ``(B, C, *s)``.

    Average pooling and linear interpolation are separable linear maps; as matrix products
    their backward is a matrix product too (PyTorch's CPU backward of ``interpolate`` and
    ``avg_pool`` scatters element by element; figures in docs/benchmarks.md).
    """
    b, c = x.shape[:2]
    y = x
    for k, m in enumerate(mats):
        size = list(y.shape[2:])
        m = m.to(device=x.device, dtype=x.dtype)
        if k == len(size) - 1:
            y = y @ m.t()  # folds into one (B·C·…, in) @ (in, out) product
        else:
            pre, post = math.prod(size[:k]), math.prod(size[k + 1:])
            y = torch.matmul(m, y.reshape(b * c * pre, size[k], post))
            y = y.view(b, c, *size[:k], m.shape[0], *size[k + 1:])
    return y


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, None when autocast is off (or the device
    type has no autocast, e.g. ``meta``)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:
        return None


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
    ``max_tokens=None`` is the exact form. The pooling and the interpolation run as one small
    matrix product per axis (same values; fast backward); an axis shorter than ``p`` is one
    window (PyTorch's ``avg_pool`` would refuse such an input, e.g. 200×2 with 16 tokens).
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
            if p > 1:  # avg_pool(kernel = stride = p, ceil_mode=True) as matrix products
                kv = _separable(x, [_matrix_on("pool", int(s), p, x.device, x.dtype) for s in x.shape[2:]])
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
            # linear interpolation (align_corners=False) back to the input size, as matrix products
            out = _separable(out, [_matrix_on("linear", int(a), int(b), out.device, out.dtype)
                                   for a, b in zip(out.shape[2:], x.shape[2:])])
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

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """``A`` ``(B, C, C)`` (float32) for ``f`` ``(B, C, N)``.

        The energy ``F Fᵀ`` sums ``N`` products per entry: in fp16 (max 65504) a sum of squares
        of unit-scale features overflows from about 48³ voxels on, and the softmax of ``inf −
        inf`` is NaN. It is therefore computed in float32 whatever autocast asks for.
        """
        if f.dtype != torch.float32 or _autocast_dtype(f.device.type) is not None:
            with torch.autocast(f.device.type, enabled=False):
                f32 = f.float()
                energy = f32 @ f32.transpose(1, 2)
                return torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
        # plain autograd (a symmetric-backward node was removed on 2026-12-03: it did not make a
        # whole training step faster, docs/benchmarks.md)
        energy = f @ f.transpose(1, 2)
        return torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """``x + γ·A X`` (plus ``extra``, a tensor of ``x``'s shape, added in the same pass)."""
        f = x.flatten(2)  # (B, C, N)
        a = (self.gamma * self.attention(f)).to(_autocast_dtype(f.device.type) or f.dtype)
        if extra is None:
            # x + (γ·A) X in one pass over the full-size tensors (γ scales the C×C matrix)
            return torch.baddbmm(f, a, f).view(x.shape)
        # extra + (I + γ·A) X: the residual folded into the C×C matrix, still one pass
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        return torch.baddbmm(extra.flatten(2), a + eye, f).view(x.shape)


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
        return self.channel(x, extra=self.position.delta(x))


@register_attention("dual", family="self-attention", aliases=("danet",),
                    description="DANet position + channel self-attention (pooled to max_tokens positions)")
def dual(channels: int, spatial_dims: int = 3, reduction: int = 8, max_tokens: int | None = 512,
         pool_queries: bool = True) -> nn.Module:
    return DualAttention(channels, spatial_dims, reduction, max_tokens, pool_queries)
