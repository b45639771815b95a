"""Split attention (ResNeSt, Zhang et al., 2020), 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.attention import register_attention
from attnseg.blocks import ConvNormAct
from attnseg.blocks.factories import LayerSpec


class SplitAttention(nn.Module):
    """Split-attention convolution.

    ``conv`` (``k×k(×k)``, ``C → C·radix``, groups ``cardinality·radix``, + norm + ReLU)
    produces ``radix`` splits of ``C`` channels; their sum is globally average-pooled to
    ``(B, C)`` and goes through ``fc1`` (grouped 1×1, ``C → inter``) + ReLU and ``fc2``
    (grouped 1×1, ``inter → C·radix``); a softmax across the radix splits (sigmoid when
    ``radix = 1``) weights the splits, which are summed. ``inter = max(C·radix // reduction, 8)``
    rounded up to a multiple of ``cardinality``. No norm on the pooled vector (a batch/instance
    norm there fails on one value per channel; the AMIS reference's IN did). The AMIS
    reference's bugs (max pool called avg; every layer fed the input) are not reproduced.
    Shape ``(B, C, *spatial)`` → same; ``C`` must be divisible by ``cardinality``.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, radix: int = 2, cardinality: int = 1,
                 reduction: int = 4, kernel_size: int = 3, norm: LayerSpec = "batch") -> None:
        super().__init__()
        if radix < 1 or cardinality < 1 or channels % cardinality:
            raise ValueError(f"need radix >= 1 and channels ({channels}) divisible by cardinality ({cardinality})")
        self.radix, self.cardinality, self.channels = radix, cardinality, channels
        inter = max(channels * radix // reduction, 8)
        inter = -(-inter // cardinality) * cardinality
        self.conv = ConvNormAct(spatial_dims, channels, channels * radix, kernel_size, groups=cardinality * radix,
                                norm=norm, act="relu")
        self.fc1 = nn.Conv1d(channels, inter, 1, groups=cardinality)
        self.fc2 = nn.Conv1d(inter, channels * radix, 1, groups=cardinality)

    def split_weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled ``(B, C)`` → split weights ``(B, radix, C)`` (softmax over radix)."""
        b = pooled.shape[0]
        a = self.fc2(F.relu(self.fc1(pooled.unsqueeze(-1)))).view(b, self.cardinality, self.radix, -1)
        if self.radix == 1:
            return torch.sigmoid(a).reshape(b, 1, self.channels)
        # logits are grouped (cardinality, radix, C/cardinality); softmax across radix per channel
        return torch.softmax(a, dim=2).transpose(1, 2).reshape(b, self.radix, self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.conv(x)
        splits = y.view(b, self.radix, self.channels, *y.shape[2:])
        pooled = splits.sum(1).flatten(2).mean(-1)
        w = self.split_weights(pooled)
        return (splits * w.view(b, self.radix, self.channels, *([1] * (x.dim() - 2)))).sum(1)


@register_attention("splat", family="channel", aliases=("split-attention",),
                    description="ResNeSt split attention: radix splits weighted by a softmax (Zhang 2020)")
def splat(channels: int, spatial_dims: int = 3, radix: int = 2, cardinality: int = 1, reduction: int = 4,
          kernel_size: int = 3, norm: LayerSpec = "batch") -> nn.Module:
    return SplitAttention(channels, spatial_dims, radix, cardinality, reduction, kernel_size, norm)
