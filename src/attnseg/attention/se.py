"""Channel squeeze-and-excitation (Hu et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn

from attnseg.attention import register_attention
from attnseg.blocks import check_spatial_dims


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
            logits = self.mlp(flat.amax(-1))
        else:
            logits = self.mlp(flat.mean(-1)) + self.mlp(flat.amax(-1))
        w = torch.sigmoid(logits)
        return x * w.reshape(w.shape + (1,) * (x.dim() - 2))


@register_attention("cse", family="channel", aliases=("se",),
                    description="Channel squeeze-and-excitation (Hu et al. 2018)")
def cse(channels: int, spatial_dims: int = 3, reduction: int = 8, pooling: str = "avg") -> nn.Module:
    return ChannelSE(channels, spatial_dims, reduction, pooling)
