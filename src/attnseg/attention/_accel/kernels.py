"""Compiled CPU kernel (numba) for the training path of 2D ``stn``.

PyTorch's eager CPU ops cannot fuse passes over memory, and its CPU ``grid_sample`` is a
scalar loop. Each kernel here is one compiled call:

* :func:`bilinear_backward` - 2D ``grid_sample`` backward, channel plane by channel plane.

Kernels that did not make a whole training step >= 10 % faster were removed (the pooled-scale
``Σ g·x`` / ``g·a + c`` kernels, PAM's fixed-form tiny network, spatial SE / scSE, CBAM, stn's
3D trilinear sampler; benchmarks/whole_step.py, docs/benchmarks.md). The kernels are serial (one thread): they are
memory-bound, and a numba thread pool would compete with PyTorch's for the cores. Used only for
contiguous float32 CPU tensors when numba is importable and ``ATTNSEG_NUMBA`` is not ``0``;
everything else takes the equivalent PyTorch ops (same values up to float rounding:
sums are accumulated in a different order). Compiled code is cached on disk by numba
(``cache=True``), so only the first process pays the compile time.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:  # optional at import time so that a broken numba install degrades to the PyTorch path
    import numba
except Exception:  # pragma: no cover - exercised only without numba
    numba = None


def available() -> bool:
    """Whether the compiled kernels are used (numba importable, ``ATTNSEG_NUMBA`` != ``0``)."""
    return numba is not None and os.environ.get("ATTNSEG_NUMBA", "1") != "0"


def applies(*tensors: torch.Tensor) -> bool:
    """The kernels take contiguous float32 CPU tensors only."""
    return available() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


if numba is not None:
    _jit = numba.njit(cache=True, fastmath=True, nogil=True)
    @_jit
    def _bilinear_backward(x, hn, wn, grid, gout, want_x, want_grid, gx, ggrid):  # pragma: no cover
        # 2D grid_sample backward (bilinear, zero padding, align_corners=False) in x's own
        # (B, C, H·W) layout: the corner weights are computed once per point, then each
        # channel's plane (H·W values: cache-sized in 2D) is scattered into / dotted with in turn.
        # x (B, C, H·W), grid (B, N, 2) normalised (x, y), gout (B, C, N),
        # gx like x and zero-filled by the caller, ggrid (B, N, 2)
        bn, cn, _ = x.shape
        nn_ = grid.shape[1]
        w = np.empty((nn_, 4), dtype=np.float32)
        off = np.empty((nn_, 4), dtype=np.int64)
        frac = np.empty((nn_, 2), dtype=np.float32)
        dots = np.empty((nn_, 4), dtype=np.float32)
        for b in range(bn):
            for n in range(nn_):
                ix = ((grid[b, n, 0] + np.float32(1.0)) * wn - np.float32(1.0)) * np.float32(0.5)
                iy = ((grid[b, n, 1] + np.float32(1.0)) * hn - np.float32(1.0)) * np.float32(0.5)
                for k in range(4):
                    off[n, k] = -1
                    w[n, k] = 0.0
                    dots[n, k] = 0.0
                frac[n, 0] = 0.0
                frac[n, 1] = 0.0
                if not (ix >= -1.0 and ix < wn and iy >= -1.0 and iy < hn):
                    continue  # outside (or NaN): zero padding
                x0, y0 = np.floor(ix), np.floor(iy)
                fx, fy = ix - x0, iy - y0
                frac[n, 0] = fx
                frac[n, 1] = fy
                xi, yi = int(x0), int(y0)
                for k in range(4):
                    dy, dx = k // 2, k % 2
                    y, xx = yi + dy, xi + dx
                    if 0 <= y < hn and 0 <= xx < wn:
                        off[n, k] = y * wn + xx
                        w[n, k] = (fy if dy == 1 else np.float32(1.0) - fy) * (fx if dx == 1 else np.float32(1.0) - fx)
            for c in range(cn):
                xp = x[b, c]
                gxp = gx[b, c]
                gop = gout[b, c]
                for n in range(nn_):
                    go = gop[n]
                    for k in range(4):
                        o = off[n, k]
                        if o >= 0:
                            if want_x:
                                gxp[o] += w[n, k] * go
                            if want_grid:
                                dots[n, k] += go * xp[o]
            for n in range(nn_):
                gix = np.float32(0.0)
                giy = np.float32(0.0)
                if want_grid:
                    fx, fy = frac[n, 0], frac[n, 1]
                    for k in range(4):
                        dy, dx = k // 2, k % 2
                        wx = fx if dx == 1 else np.float32(1.0) - fx
                        wy = fy if dy == 1 else np.float32(1.0) - fy
                        gix += dots[n, k] * np.float32(2 * dx - 1) * wy
                        giy += dots[n, k] * wx * np.float32(2 * dy - 1)
                ggrid[b, n, 0] = gix * np.float32(0.5 * wn)
                ggrid[b, n, 1] = giy * np.float32(0.5 * hn)


def bilinear_backward(x: torch.Tensor, grid: torch.Tensor, gout: torch.Tensor, want_x: bool, want_grid: bool
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of 2D ``F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
    align_corners=False)`` for ``x`` ``(B, C, H, W)``, ``grid`` ``(B, Ho, Wo, 2)`` and
    ``dL/dout`` ``(B, C, Ho, Wo)``: ``(dL/dx or None, dL/dgrid or None)``."""
    b, c, h, w = x.shape
    g = grid.reshape(b, -1, 2).contiguous()
    gx = torch.zeros_like(x) if want_x else torch.empty((b, c, 1), dtype=x.dtype)
    ggrid = torch.empty_like(g)
    _bilinear_backward(_np(x).reshape(b, c, -1), h, w, _np(g), _np(gout.reshape(b, c, -1).contiguous()),
                       bool(want_x), bool(want_grid), gx.numpy().reshape(b, c, -1), ggrid.numpy())
    return (gx if want_x else None), (ggrid.view(grid.shape) if want_grid else None)
