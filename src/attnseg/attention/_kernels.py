"""Compiled CPU kernels (numba) for the training path of ``stn``.

PyTorch's eager CPU ops cannot fuse passes over memory, and its CPU ``grid_sample`` is a
scalar loop. Each kernel here is one compiled call:

* :func:`trilinear_forward` / :func:`trilinear_backward` - 3D ``grid_sample`` (trilinear, zero
  padding, ``align_corners=False``) on a channels-last copy of the input, for ``stn``:
  PyTorch's CPU 3D sampler is a scalar loop reading each corner's channels ``D·H·W``
  elements apart, and its backward scatters the same way (2-2.5x slower forward+backward);
* :func:`transpose_last2` - the tiled transposes to and from channels-last;
* :func:`bilinear_backward` - 2D ``grid_sample`` backward, channel plane by channel plane.

Kernels that did not make a whole training step >= 10 % faster were removed (the pooled-scale
``Σ g·x`` / ``g·a + c`` kernels, PAM's fixed-form tiny network, spatial SE / scSE, CBAM;
benchmarks/whole_step.py, docs/benchmarks.md). The kernels are serial (one thread): they are
memory-bound, and a numba thread pool would compete with PyTorch's for the cores. Used only for
contiguous float32 CPU tensors when numba is importable and ``ATTNSEG_NUMBA`` is not ``0``;
everything else takes the equivalent PyTorch ops (same values up to float rounding:
sums are accumulated in a different order). Compiled code is cached on disk by numba
(``cache=True``), so only the first process pays the compile time (~1-3 s per kernel).
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
    def _transpose_last2(src, dst):  # pragma: no cover - compiled
        # dst[b, j, i] = src[b, i, j] for (B, I, J) -> (B, J, I), tiled. The inner loop runs along
        # the long axis on the side where it is contiguous: for (C, N) -> (N, C) along the source
        # rows (the C destination rows of a tile form one contiguous block, whereas C source rows
        # N·4 bytes apart can map to the same cache sets), for (N, C) -> (C, N) along the
        # destination rows. 1.5-2.5x faster than PyTorch's permuted copy here (6.6 / 4.7 vs
        # 10-12 ms for 32x48^3).
        bn, in_, jn = src.shape
        if in_ <= jn:
            for b in range(bn):
                for i0 in range(0, in_, 32):
                    i1 = min(i0 + 32, in_)
                    for j0 in range(0, jn, 32):
                        j1 = min(j0 + 32, jn)
                        for i in range(i0, i1):
                            for j in range(j0, j1):
                                dst[b, j, i] = src[b, i, j]
        else:
            for b in range(bn):
                for i0 in range(0, in_, 128):
                    i1 = min(i0 + 128, in_)
                    for j0 in range(0, jn, 128):
                        j1 = min(j0 + 128, jn)
                        for j in range(j0, j1):
                            for i in range(i0, i1):
                                dst[b, j, i] = src[b, i, j]

    @_jit
    def _corners(gx, gy, gz, dn, hn, wn, cn, w, off):  # pragma: no cover - compiled
        """Weights ``w[8]`` and row offsets ``off[8]`` (into the flattened channels-last input of
        one sample) of the eight trilinear corners of the normalised point (gx, gy, gz); corner
        ``k`` is (dz, dy, dx) = (k >> 2, (k >> 1) & 1, k & 1); corners outside the volume get
        weight 0 and offset -1 (zero padding). Returns the fractional parts (fx, fy, fz) and
        whether any corner is inside."""
        ix = ((gx + np.float32(1.0)) * wn - np.float32(1.0)) * np.float32(0.5)
        iy = ((gy + np.float32(1.0)) * hn - np.float32(1.0)) * np.float32(0.5)
        iz = ((gz + np.float32(1.0)) * dn - np.float32(1.0)) * np.float32(0.5)
        if not (ix >= -1.0 and ix < wn and iy >= -1.0 and iy < hn and iz >= -1.0 and iz < dn):
            return np.float32(0.0), np.float32(0.0), np.float32(0.0), False  # outside (or NaN)
        x0, y0, z0 = np.floor(ix), np.floor(iy), np.floor(iz)
        fx, fy, fz = ix - x0, iy - y0, iz - z0
        xi, yi, zi = int(x0), int(y0), int(z0)
        k = 0
        for dz in range(2):
            z = zi + dz
            wz = fz if dz == 1 else np.float32(1.0) - fz
            for dy in range(2):
                y = yi + dy
                wy = fy if dy == 1 else np.float32(1.0) - fy
                for dx in range(2):
                    x = xi + dx
                    wx = fx if dx == 1 else np.float32(1.0) - fx
                    if 0 <= z < dn and 0 <= y < hn and 0 <= x < wn:
                        w[k] = wz * wy * wx
                        off[k] = ((z * hn + y) * wn + x) * cn
                    else:
                        w[k] = np.float32(0.0)
                        off[k] = -1
                    k += 1
        return fx, fy, fz, True

    @_jit
    def _trilinear_forward(xf, shape, grid, out):  # pragma: no cover - compiled
        # xf (B, D*H*W*C) flattened channels-last input, shape = (D, H, W, C),
        # grid (B, N, 3) normalised (x, y, z), out (B, N, C)
        dn, hn, wn, cn = shape
        w = np.empty(8, dtype=np.float32)
        off = np.empty(8, dtype=np.int64)
        for b in range(grid.shape[0]):
            xb = xf[b]
            for n in range(grid.shape[1]):
                inside = _corners(grid[b, n, 0], grid[b, n, 1], grid[b, n, 2], dn, hn, wn, cn, w, off)[3]
                ob = out[b, n]
                for c in range(cn):
                    ob[c] = 0.0
                if not inside:
                    continue
                for k in range(8):
                    if off[k] >= 0:
                        wk = w[k]
                        row = xb[off[k]:off[k] + cn]
                        for c in range(cn):
                            ob[c] += wk * row[c]

    @_jit
    def _trilinear_backward(xf, shape, grid, gout, want_x, want_grid, gxf, ggrid):  # pragma: no cover
        # gout (B, N, C); gxf like xf, zero-filled by the caller; ggrid (B, N, 3)
        dn, hn, wn, cn = shape
        w = np.empty(8, dtype=np.float32)
        off = np.empty(8, dtype=np.int64)
        for b in range(grid.shape[0]):
            xb = xf[b]
            gb = gxf[b]
            for n in range(grid.shape[1]):
                fx, fy, fz, inside = _corners(grid[b, n, 0], grid[b, n, 1], grid[b, n, 2], dn, hn, wn, cn, w, off)
                ggrid[b, n, 0] = 0.0
                ggrid[b, n, 1] = 0.0
                ggrid[b, n, 2] = 0.0
                if not inside:
                    continue
                go = gout[b, n]
                gix = np.float32(0.0)
                giy = np.float32(0.0)
                giz = np.float32(0.0)
                for k in range(8):
                    if off[k] < 0:
                        continue
                    if want_x:
                        wk = w[k]
                        grow = gb[off[k]:off[k] + cn]
                        for c in range(cn):
                            grow[c] += wk * go[c]
                    if want_grid:
                        row = xb[off[k]:off[k] + cn]
                        dot = np.float32(0.0)
                        for c in range(cn):
                            dot += go[c] * row[c]
                        # corner weight = wz·wy·wx with w· = f· (upper) or 1 - f· (lower):
                        # d/d i· is ± the product of the other two
                        dz, dy, dx = k >> 2, (k >> 1) & 1, k & 1
                        wx = fx if dx == 1 else np.float32(1.0) - fx
                        wy = fy if dy == 1 else np.float32(1.0) - fy
                        wz = fz if dz == 1 else np.float32(1.0) - fz
                        gix += dot * np.float32(2 * dx - 1) * wy * wz
                        giy += dot * wx * np.float32(2 * dy - 1) * wz
                        giz += dot * wx * wy * np.float32(2 * dz - 1)
                # d ix / d grid_x = W / 2 (align_corners=False), likewise for y and z
                ggrid[b, n, 0] = gix * np.float32(0.5 * wn)
                ggrid[b, n, 1] = giy * np.float32(0.5 * hn)
                ggrid[b, n, 2] = giz * np.float32(0.5 * dn)

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

    # spatial / spatial-and-channel SE; x (B, C, N); mode 0 = spatial only, 1 = add, 2 = max
    # (the channel branch wins where x·sc > x·ss strictly, ties go to the spatial branch)


def trilinear_forward(xc: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear sampling as ``F.grid_sample(mode="bilinear", padding_mode="zeros",
    align_corners=False)`` in 3D, on a channels-last input ``xc`` ``(B, D, H, W, C)`` at the
    points ``grid`` ``(B, N, 3)`` (normalised ``x, y, z``): ``(B, N, C)``."""
    out = torch.empty(grid.shape[0], grid.shape[1], xc.shape[-1], dtype=xc.dtype)
    _trilinear_forward(_np(xc).reshape(xc.shape[0], -1), np.array(xc.shape[1:], dtype=np.int64), _np(grid),
                       out.numpy())
    return out


def trilinear_backward(xc: torch.Tensor, grid: torch.Tensor, gout: torch.Tensor, want_x: bool, want_grid: bool
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`trilinear_forward` from ``dL/dout`` ``(B, N, C)``: ``(dL/dxc`` in
    ``xc``'s channels-last shape ``or None, dL/dgrid (B, N, 3) or None)``."""
    gxc = torch.zeros_like(xc) if want_x else torch.empty((xc.shape[0], 1), dtype=xc.dtype)
    ggrid = torch.empty_like(grid)
    _trilinear_backward(_np(xc).reshape(xc.shape[0], -1), np.array(xc.shape[1:], dtype=np.int64), _np(grid),
                        _np(gout), bool(want_x), bool(want_grid), gxc.numpy().reshape(xc.shape[0], -1),
                        ggrid.numpy())
    return (gxc if want_x else None), (ggrid if want_grid else None)


def transpose_last2(t: torch.Tensor) -> torch.Tensor:
    """Contiguous ``(B, J, I)`` transpose of a contiguous ``(B, I, J)`` tensor (tiled copy)."""
    out = torch.empty(t.shape[0], t.shape[2], t.shape[1], dtype=t.dtype)
    _transpose_last2(_np(t), out.numpy())
    return out


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
