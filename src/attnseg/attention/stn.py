"""Spatial transformer (Jaderberg et al., 2015), 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.attention import _kernels, register_attention
from attnseg.attention._fused import eager
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


class _Bilinear(torch.autograd.Function):
    """2D ``grid_sample`` (bilinear, zero padding, ``align_corners=False``): PyTorch's own
    (vectorised) forward, and a compiled backward (:mod:`attnseg.attention._kernels`) that
    computes the corner weights once per point and then scatters/dots channel plane by
    channel plane in the input's own layout (PyTorch's CPU backward is ~4x its forward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, grid = ctx.saved_tensors
        return _kernels.bilinear_backward(x, grid, gy, ctx.needs_input_grad[0], ctx.needs_input_grad[1])


def grid_sample_2d(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)``
    for 4-D inputs, with the compiled backward for contiguous float32 CPU tensors when a
    gradient is needed (same values up to float rounding)."""
    if torch.is_grad_enabled() and (x.requires_grad or grid.requires_grad) and eager() and _kernels.applies(x, grid):
        return _Bilinear.apply(x, grid)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def grid_sample_3d(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)``
    for 5-D inputs (PyTorch's own: compiled trilinear kernels were removed on 2026-12-03, their gain on a
    whole U-Net training step was under the 10 % bar; figures in docs/benchmarks.md)."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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
            if self.mode == "bilinear":
                y = grid_sample_3d(xf, grid) if self.spatial_dims == 3 else grid_sample_2d(xf, grid)
            else:
                y = F.grid_sample(xf, grid, mode=self.mode, padding_mode="zeros", align_corners=False)
        return y.to(x.dtype)


@register_attention("stn", family="spatial", aliases=("spatial-transformer",),
                    description="Spatial transformer: localisation net → affine grid → resampling, identity init")
def stn(channels: int, spatial_dims: int = 3, features: int = 8, hidden: int = 32, mode: str = "bilinear") -> nn.Module:
    return SpatialTransformer(channels, spatial_dims, features, hidden, mode)
