"""Squeeze-and-excitation family: channel SE (Hu et al., 2018), spatial SE and scSE (Roy et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn

from attnseg.attention import register_attention
from attnseg.attention._accel import combine
from attnseg.blocks import check_spatial_dims, conv


class ChannelSE(nn.Module):
    """Channel SE: global pooling → MLP ``C → C//r → C`` → sigmoid → scale each channel.

    ``pooling``: ``avg``, ``max`` or ``avg+max`` (shared MLP, logits summed before the sigmoid).
    ``reduction`` is clamped to ``channels`` so the hidden layer has at least one unit.
    Shape: ``(B, C, *spatial)`` → same.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8, pooling: str = "avg") -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if pooling not in ("avg", "max", "avg+max"):
            raise ValueError(f"pooling must be avg, max or avg+max, got {pooling!r}")
        hidden = max(channels // min(reduction, channels), 1)
        self.pooling = pooling
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def mlp(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        if self.pooling == "avg":
            logits = self.mlp(flat.mean(-1))
        elif self.pooling == "max":
            logits = self.mlp(flat.max(-1).values)
        else:
            logits = self.mlp(flat.mean(-1)) + self.mlp(flat.max(-1).values)
        w = torch.sigmoid(logits)
        return x * w.reshape(w.shape + (1,) * (x.dim() - 2))


@register_attention("cse", family="channel", aliases=("se",),
                    description="Channel squeeze-and-excitation (Hu et al. 2018)")
def cse(channels: int, spatial_dims: int = 3, reduction: int = 8, pooling: str = "avg") -> nn.Module:
    return ChannelSE(channels, spatial_dims, reduction, pooling)


class SpatialSE(nn.Module):
    """Spatial squeeze-and-excitation (Roy et al., 2018): a 1×1(×1) convolution ``C → 1``
    (``conv``), sigmoid, and every voxel of every channel scaled by that map.

    Shape: ``(B, C, *spatial)`` → same.
    """

    def __init__(self, channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = conv(check_spatial_dims(spatial_dims), channels, 1, kernel_size=1)

    def spatial_map(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid map ``(B, 1, *spatial)``. The 1×1 convolution ``C → 1`` is computed as a
        matrix product over the channels (same values; PyTorch's CPU convolution kernels are
        slow for a single output channel, especially backward)."""
        # (B, 1, C) @ (B, C, N): a batched product over x's own layout (a 2-D weight would make
        # matmul fold x into a transposed (B·N, C) copy)
        w = self.conv.weight.view(1, 1, -1).expand(x.shape[0], 1, -1)
        s = torch.bmm(w, x.flatten(2)) + self.conv.bias.view(1, 1, 1)
        return torch.sigmoid(s).view(x.shape[0], 1, *x.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.spatial_map(x)


class ConcurrentSE(nn.Module):
    """scSE (Roy et al., 2018): channel SE (``cse``) and spatial SE (``sse``) applied to the same
    input and combined by ``combine``: ``"add"``/``"sum"`` (default: the element-wise sum of the
    original MICCAI 2018 paper, as segmentation_models_pytorch), ``"max"`` (element-wise
    maximum, the "max-out" aggregation of the journal version, Roy et al. IEEE TMI 2019) or
    ``"mul"`` (``x · s_c · s_s``).
    Shape ``(B, C, *spatial)`` → same.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8, pooling: str = "avg",
                 combine: str = "add") -> None:
        super().__init__()
        combine = {"sum": "add"}.get(combine, combine)
        if combine not in ("max", "add", "mul"):
            raise ValueError(f"combine must be max, add/sum or mul, got {combine!r}")
        self.combine = combine
        self.cse = ChannelSE(channels, spatial_dims, reduction, pooling)
        self.sse = SpatialSE(channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.combine == "mul":
            return self.sse(self.cse(x))
        # max(cse(x), sse(x)) or their sum; _accel may compute it in place / with a faster backward
        return combine(self.cse(x), self.sse(x), self.combine)


@register_attention("sse", family="spatial", description="Spatial squeeze-and-excitation (Roy et al. 2018)")
def sse(channels: int, spatial_dims: int = 3) -> nn.Module:
    return SpatialSE(channels, spatial_dims)


@register_attention("scse", family="channel+spatial",
                    description="Concurrent channel and spatial SE, combined by sum or max (Roy et al. 2018)")
def scse(channels: int, spatial_dims: int = 3, reduction: int = 8, pooling: str = "avg",
         combine: str = "add") -> nn.Module:
    return ConcurrentSE(channels, spatial_dims, reduction, pooling, combine)
