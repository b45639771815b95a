"""Spatial transformer (Jaderberg et al., 2015), 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.attention import register_attention
from attnseg.blocks import ConvNormAct, check_spatial_dims


def affine_grid(theta: torch.Tensor, size: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Sampling grid for ``grid_sample`` from affine matrices ``theta`` ``(B, n, n+1)``.

    Same convention as ``F.affine_grid(..., align_corners=False)`` (normalised coordinates,
    last grid component = x = the last spatial axis), written with plain ops so it exports
    to ONNX at any opset. ``size`` is the spatial size; returns ``(B, *size, n)``.
    """
    n = len(size)
    axes = [(torch.arange(s, dtype=theta.dtype, device=theta.device) * 2 + 1) / s - 1 for s in size]
    mesh = torch.meshgrid(*axes, indexing="ij")  # one tensor per spatial axis, in (D, H, W) order
    # homogeneous coordinates in (x, y[, z]) order = reversed axes, plus the constant 1
    base = torch.stack([*reversed(mesh), torch.ones_like(mesh[0])], dim=-1).reshape(-1, n + 1)
    grid = base @ theta.transpose(1, 2)  # (B, N, n)
    return grid.reshape(theta.shape[0], *size, n)


class SpatialTransformer(nn.Module):
    """Localisation network → affine matrix → resampling of the input.

    Localisation: two strided ``ConvNormAct`` (``C → features``), global average pool,
    ``fc1`` (``features → hidden``) + ReLU, ``fc2`` (``hidden → n·(n+1)``) **initialised to
    the identity transform** (zero weights, identity bias), so a fresh module returns its
    input (up to interpolation at the same grid points, i.e. exactly). The input is
    resampled with ``grid_sample`` (``mode``, zero padding, ``align_corners=False``).
    Shape ``(B, C, *spatial)`` → same (the content is transformed).
    :meth:`transform` returns the ``(B, n, n+1)`` matrices.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, features: int = 8, hidden: int = 32,
                 mode: str = "bilinear") -> None:
        super().__init__()
        n = self.spatial_dims = check_spatial_dims(spatial_dims)
        self.mode = mode
        self.loc = nn.Sequential(
            ConvNormAct(n, channels, features, 3, 2, norm=None, act="relu"),
            ConvNormAct(n, features, features, 3, 2, norm=None, act="relu"),
        )
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, n * (n + 1))
        nn.init.zeros_(self.fc2.weight)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.eye(n, n + 1).flatten())

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Affine matrices ``(B, n, n+1)`` (float32) predicted from ``x``.

        The localisation convolutions follow autocast; the two small linear layers run in
        float32: a half-precision ``theta`` near the identity is rounded to 2⁻¹¹ (fp16) or 2⁻⁸
        (bf16) of the volume's half-width, i.e. up to ~0.25 voxel at 64 voxels in bf16.
        """
        f = self.loc(x).flatten(2).mean(-1)
        n = self.spatial_dims
        with torch.autocast(x.device.type, enabled=False):
            return self.fc2(F.relu(self.fc1(f.float()))).view(-1, n, n + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.transform(x)
        # the sampling grid and the interpolation in float32 whatever autocast asks for (half-
        # precision coordinates misplace samples by a fraction of a voxel); the output keeps x's dtype
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            grid = affine_grid(theta, list(x.shape[2:]))
            y = F.grid_sample(xf, grid, mode=self.mode, padding_mode="zeros", align_corners=False)
        return y.to(x.dtype)


@register_attention("stn", family="spatial", aliases=("spatial-transformer",),
                    description="Spatial transformer: localisation net → affine grid → resampling, identity init")
def stn(channels: int, spatial_dims: int = 3, features: int = 8, hidden: int = 32, mode: str = "bilinear") -> nn.Module:
    return SpatialTransformer(channels, spatial_dims, features, hidden, mode)
