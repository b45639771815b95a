"""Project & Excite (Rickmann et al., 2019), 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.attention import register_attention
from attnseg.blocks import act, check_spatial_dims, conv
from attnseg.blocks.factories import LayerSpec


class ProjectExcite(nn.Module):
    """Project & Excite.

    For each spatial axis the input is averaged over all the other spatial axes (3D: over
    (H, W) → ``(B, C, D, 1, 1)``, over (D, W), over (D, H); 2D: over W and over H); the
    projections are broadcast-summed (divided by their number when ``average=True``, as in
    the AMIS reference) into a full-size map, then ``conv1`` (1×1, ``C → C//r``) → ``act``
    (default PReLU with one slope per channel, as the reference) → ``conv2`` (1×1,
    ``C//r → C``) → sigmoid, and ``x`` is multiplied by it.

    ``conv1`` is linear, so it is applied to the small projections before the broadcast sum
    (identical result, no full-size ``C``-channel intermediate); the full-size work is the
    ``C//r``-channel activation and ``conv2``. Shape ``(B, C, *spatial)`` → same.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 2,
                 act_spec: LayerSpec = "prelu_channel", average: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        hidden = max(channels // reduction, 1)
        self.average = average
        self.conv1 = conv(spatial_dims, channels, hidden, kernel_size=1)
        self.act = act(act_spec, hidden)
        self.conv2 = conv(spatial_dims, hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.spatial_dims
        w = self.conv1.weight
        fn = F.conv3d if n == 3 else F.conv2d
        z = None
        for axis in range(n):
            others = [2 + i for i in range(n) if i != axis]
            p = fn(x.mean(dim=others, keepdim=True), w)  # 1×1 conv on the small projection
            z = p if z is None else z + p
        if self.average:
            z = z / n
        z = z + self.conv1.bias.view(1, -1, *([1] * n))
        return x * torch.sigmoid(self.conv2(self.act(z)))


@register_attention("pe", family="spatial", aliases=("project-excite",),
                    description="Project & Excite: per-axis projections → 1×1 convs → sigmoid (Rickmann 2019)")
def pe(channels: int, spatial_dims: int = 3, reduction: int = 2, act: LayerSpec = "prelu_channel",
       average: bool = True) -> nn.Module:
    return ProjectExcite(channels, spatial_dims, reduction, act, average)
