"""AnatomyNet's residual squeeze-and-excitation block (Zhu et al., 2018), 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn

from attnseg.attention import register_attention
from attnseg.attention.se import ChannelSE
from attnseg.blocks import ConvNormAct, act
from attnseg.blocks.factories import LayerSpec


class ResidualSEBlock(nn.Module):
    """``y = act(x + SE(conv-norm-act → conv-norm-act (x)))``: two 3×3(×3) convolutions
    ``C → C`` (``conv1``, ``conv2``), a channel SE (``se``, reduction ``r``) on the residual
    branch, identity shortcut, final activation. Shape ``(B, C, *spatial)`` → same.

    The SE sees the activated branch: directly after a batch norm in training mode with
    batch size 1 every channel's mean is exactly the norm's shift, so the SE descriptor would
    be input-independent and its first layer would get no gradient.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 4, kernel_size: int = 3,
                 norm: LayerSpec = "batch", act_spec: LayerSpec = "relu") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, channels, channels, kernel_size, norm=norm, act=act_spec)
        self.conv2 = ConvNormAct(spatial_dims, channels, channels, kernel_size, norm=norm, act=act_spec)
        self.se = ChannelSE(channels, spatial_dims, reduction, "avg")
        self.act = act(act_spec, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.se(self.conv2(self.conv1(x))))


@register_attention("anatomynet", family="channel", aliases=("res-se",),
                    description="AnatomyNet residual SE block: 2 convs → SE → + identity (Zhu 2018)")
def anatomynet(channels: int, spatial_dims: int = 3, reduction: int = 4, kernel_size: int = 3,
               norm: LayerSpec = "batch", act: LayerSpec = "relu") -> nn.Module:
    return ResidualSEBlock(channels, spatial_dims, reduction, kernel_size, norm, act)
