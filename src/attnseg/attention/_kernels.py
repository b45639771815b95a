"""Compiled CPU kernels (numba) for the memory-bound attention modules' training path.

PyTorch's eager CPU ops cannot fuse: the backward of ``y = x · a`` (``a`` pooled from
``x``) needs ``Σ g·x`` per slice, which eager mode computes by writing the product to
memory and reading it back, and ``g·a + dL/dz / n``, which takes a multiply and an add pass
(``torch.addcmul`` with two broadcast operands falls back to a scalar loop, 3-4x slower).
And the tiny per-slice network of PAM is ~40 dispatched operations of a few microseconds
each, as much time as the full-size work at 2×32×128². The kernels here do each of these
in one compiled call:

* :func:`slice_dot` - ``Σ g·x`` per (row, slice) in one read of ``g`` and ``x``;
* :func:`scale_add` - ``g·a + c`` per (row, slice) in one pass;
* :func:`pam_fixed_forward` / :func:`pam_fixed_backward` - PAM's tiny network (fixed form,
  average pooling, detached channel descriptor) and its hand-written gradients.

Tensors are ``(R, P, D, Q)`` views of ``(B, C, *spatial)`` (``R = B·C``, ``D`` the slice
axis, ``P``/``Q`` the products of the spatial sizes before/after it). Used only for
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
    def _slice_dot(g, x, out):  # pragma: no cover - compiled
        r_n, p_n, d_n, q_n = g.shape
        for r in range(r_n):
            for d in range(d_n):
                out[r, d] = 0.0
            for p in range(p_n):
                for d in range(d_n):
                    acc = np.float32(0.0)
                    for q in range(q_n):
                        acc += g[r, p, d, q] * x[r, p, d, q]
                    out[r, d] += acc

    @_jit
    def _scale_add(g, a, c, out):  # pragma: no cover - compiled
        r_n, p_n, d_n, q_n = g.shape
        for r in range(r_n):
            for p in range(p_n):
                for d in range(d_n):
                    ad = a[r, d]
                    cd = c[r, d]
                    for q in range(q_n):
                        out[r, p, d, q] = g[r, p, d, q] * ad + cd

    @_jit
    def _sigmoid(v):  # pragma: no cover - compiled
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-v))

    @_jit
    def _pam_forward(z, w1, b1, w2, b2, cw1, cb1, cw2, cb2, a, h, s, desc, u, t):  # pragma: no cover
        bn, cn, dn = z.shape
        kn = w1.shape[1]
        jn = cw1.shape[0]
        p = np.empty(dn, dtype=np.float32)
        for b in range(bn):
            for c in range(cn):
                # slice excitation: per-channel FC (D -> D//r) + ReLU, FC (D//r -> D), sigmoid
                for k in range(kn):
                    acc = b1[c, k]
                    for d in range(dn):
                        acc += w1[c, k, d] * z[b, c, d]
                    h[b, c, k] = max(acc, np.float32(0.0))
                smax = np.float32(-np.inf)
                for d in range(dn):
                    acc = b2[c, d]
                    for k in range(kn):
                        acc += w2[c, d, k] * h[b, c, k]
                    sd = _sigmoid(acc)
                    s[b, c, d] = sd
                    smax = max(smax, sd)
                # key slices: softmax(s) >= its mean; descriptor = key-slice mean of z·s
                tot = np.float32(0.0)
                for d in range(dn):
                    p[d] = np.exp(s[b, c, d] - smax)
                    tot += p[d]
                mean_p = np.float32(0.0)
                for d in range(dn):
                    p[d] = p[d] / tot
                    mean_p += p[d]
                mean_p = mean_p / np.float32(dn)
                num = np.float32(0.0)
                cnt = np.float32(0.0)
                for d in range(dn):
                    if p[d] >= mean_p:
                        num += z[b, c, d] * s[b, c, d]
                        cnt += np.float32(1.0)
                desc[b, c] = num / cnt
            # channel SE on the descriptors: FC (C -> J) + ReLU, FC (J -> C), sigmoid
            for j in range(jn):
                acc = cb1[j]
                for c in range(cn):
                    acc += cw1[j, c] * desc[b, c]
                u[b, j] = max(acc, np.float32(0.0))
            for c in range(cn):
                acc = cb2[c]
                for j in range(jn):
                    acc += cw2[c, j] * u[b, j]
                tc = _sigmoid(acc)
                t[b, c] = tc
                for d in range(dn):
                    a[b, c, d] = s[b, c, d] * tc

    @_jit
    def _pam_backward(ga, z, h, s, desc, u, t, w1, w2, cw2, want_z,
                      gz, gw1, gb1, gw2, gb2, gcw1, gcb1, gcw2, gcb2):  # pragma: no cover - compiled
        bn, cn, dn = z.shape
        kn = w1.shape[1]
        jn = cw2.shape[1]
        gl = np.empty(dn, dtype=np.float32)
        gh = np.empty(kn, dtype=np.float32)
        gv = np.empty(cn, dtype=np.float32)
        gw1[:] = 0.0
        gb1[:] = 0.0
        gw2[:] = 0.0
        gb2[:] = 0.0
        gcw1[:] = 0.0
        gcb1[:] = 0.0
        gcw2[:] = 0.0
        gcb2[:] = 0.0
        for b in range(bn):
            for c in range(cn):
                tc = t[b, c]
                gt = np.float32(0.0)
                for d in range(dn):
                    sd = s[b, c, d]
                    gt += ga[b, c, d] * sd
                    gl[d] = ga[b, c, d] * tc * sd * (np.float32(1.0) - sd)  # through the sigmoid
                    gb2[c, d] += gl[d]
                for k in range(kn):
                    hk = h[b, c, k]
                    acc = np.float32(0.0)
                    for d in range(dn):
                        gw2[c, d, k] += gl[d] * hk
                        acc += gl[d] * w2[c, d, k]
                    gh[k] = acc if hk > 0 else np.float32(0.0)  # through the ReLU
                    gb1[c, k] += gh[k]
                    for d in range(dn):
                        gw1[c, k, d] += gh[k] * z[b, c, d]
                if want_z:
                    for d in range(dn):
                        acc = np.float32(0.0)
                        for k in range(kn):
                            acc += gh[k] * w1[c, k, d]
                        gz[b, c, d] = acc
                gv[c] = gt * tc * (np.float32(1.0) - tc)
            # channel SE (the descriptor is detached: parameter gradients only)
            for c in range(cn):
                gcb2[c] += gv[c]
                for j in range(jn):
                    gcw2[c, j] += gv[c] * u[b, j]
            for j in range(jn):
                if u[b, j] > 0:
                    acc = np.float32(0.0)
                    for c in range(cn):
                        acc += gv[c] * cw2[c, j]
                    gcb1[j] += acc
                    for c in range(cn):
                        gcw1[j, c] += acc * desc[b, c]


def slice_dot(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Σ g·x`` over ``P`` and ``Q`` of ``(R, P, D, Q)`` tensors: ``(R, D)``."""
    out = torch.empty(g.shape[0], g.shape[2], dtype=g.dtype)
    _slice_dot(_np(g), _np(x), out.numpy())
    return out


def scale_add(g: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``g·a + c`` for ``g`` ``(R, P, D, Q)`` and ``a``, ``c`` ``(R, D)`` (broadcast over ``P``, ``Q``)."""
    out = torch.empty_like(g)
    _scale_add(_np(g), _np(a), _np(c), out.numpy())
    return out


def pam_fixed_forward(z: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, tuple]:
    """PAM's tiny network ``z`` ``(B, C, D)`` → ``a = s ⊗ t`` ``(B, C, D)``; ``params`` = slice
    ``fc1_weight (C, K, D)``, ``fc1_bias (C, K)``, ``fc2_weight (C, D, K)``, ``fc2_bias (C, D)``,
    channel ``fc1.weight (J, C)``, ``fc1.bias (J,)``, ``fc2.weight (C, J)``, ``fc2.bias (C,)``.
    Returns ``(a, saved)`` for :func:`pam_fixed_backward`."""
    b, c, d = z.shape
    k, j = params[0].shape[1], params[4].shape[0]
    new = lambda *shape: torch.empty(shape, dtype=z.dtype)  # noqa: E731
    a, h, s, desc, u, t = new(b, c, d), new(b, c, k), new(b, c, d), new(b, c), new(b, j), new(b, c)
    _pam_forward(_np(z), *(_np(p) for p in params), a.numpy(), h.numpy(), s.numpy(), desc.numpy(),
                 u.numpy(), t.numpy())
    return a, (z, h, s, desc, u, t)


def pam_fixed_backward(saved: tuple, ga: torch.Tensor, want_z: bool, params: list[torch.Tensor]
                       ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Gradients of :func:`pam_fixed_forward` from ``dL/da`` ``(B, C, D)``:
    ``(dL/dz or None, one gradient per parameter)``."""
    z, h, s, desc, u, t = saved
    grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    gz = torch.empty_like(z)
    w1, w2, cw2 = params[0], params[2], params[6]
    _pam_backward(_np(ga.contiguous()), _np(z), _np(h), _np(s), _np(desc), _np(u), _np(t), _np(w1), _np(w2),
                  _np(cw2), bool(want_z), gz.numpy(), *(gp.numpy() for gp in grads))
    return (gz if want_z else None), grads
