"""Additive attention gate (Oktay et al., 2018, "Attention U-Net"), 2D and 3D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.attention import register_attention
from attnseg.blocks import check_spatial_dims, conv, norm, resize
from attnseg.blocks.factories import LayerSpec


class AttentionGate(nn.Module):
    """Grid attention gate on a skip tensor ``x`` with a coarser gating tensor ``g``.

    ``θ = theta(x)`` (``C → inter``, kernel = stride = ``sub_sample``, no bias);
    ``φ = phi(g)`` (1×1, ``C_g → inter``) resampled (linear interpolation) to θ's grid;
    ``ψ = sigmoid(psi(relu(θ + φ)))`` (1×1, ``inter → 1``) resampled to ``x``'s grid;
    output ``out(ψ · x)`` with ``out`` = 1×1 conv ``C → C`` + ``norm`` (instance norm with
    affine parameters, as the AMIS reference).

    Any size ratio between ``x`` and ``g`` works (θ/φ and ψ are interpolated as needed);
    ``sub_sample=2`` with ``g`` at half the grid is the reference's configuration.
    Call ``gate(x, g)``: ``x`` ``(B, C, *S)``, ``g`` ``(B, C_g, *S_g)`` → ``(B, C, *S)``.
    :meth:`attention_map` returns ψ at ``x``'s grid ``(B, 1, *S)``.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, gate_channels: int | None = None,
                 inter_channels: int | None = None, sub_sample: int | Sequence[int] = 2,
                 norm_spec: LayerSpec = ("instance", {"affine": True})) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        gate_channels = channels if gate_channels is None else int(gate_channels)
        inter = max(channels // 2, 1) if inter_channels is None else int(inter_channels)
        self.theta = conv(spatial_dims, channels, inter, kernel_size=sub_sample, stride=sub_sample, padding=0,
                          bias=False)
        self.phi = conv(spatial_dims, gate_channels, inter, kernel_size=1)
        self.psi = conv(spatial_dims, inter, 1, kernel_size=1)
        self.out = nn.Sequential(conv(spatial_dims, channels, channels, kernel_size=1),
                                 norm(norm_spec, spatial_dims, channels))

    def attention_map(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Gate coefficients ψ ``(B, 1, *x.shape[2:])`` in (0, 1)."""
        th = self.theta(x)
        ph = resize(self.phi(g), th.shape[2:])
        a = torch.sigmoid(self.psi(F.relu(th + ph)))
        return resize(a, x.shape[2:])

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.out(self.attention_map(x, g) * x)


@register_attention("ag", family="gate", gated=True, aliases=("attention-gate", "grid-gate"),
                    description="Additive attention gate on a skip with a coarser gating signal (Oktay 2018)")
def ag(channels: int, spatial_dims: int = 3, gate_channels: int | None = None, inter_channels: int | None = None,
       sub_sample: int | Sequence[int] = 2, norm: LayerSpec = ("instance", {"affine": True})) -> nn.Module:
    return AttentionGate(channels, spatial_dims, gate_channels, inter_channels, sub_sample, norm)
