"""Shared pieces of the pooled-scale attention modules and the precision / tracing checks.

Many attention modules compute a small scale tensor from average-pooled statistics of
their input and multiply the input by it::

    z = mean of x over every axis except (B, C, slice)     # (B, C, D), tiny
    a = f(z; params)                                         # (B, C, D), tiny
    y = x * a   (broadcast over the pooled axes)

``x`` is handled as the 5-D view ``(B, C, pre, D, post)``: ``D`` is the axis that is not
pooled (the slice axis; ``D = 1`` gives ordinary channel attention) and ``pre``/``post``
are the products of the spatial sizes before/after it, so no copy is needed for any axis.

This used to hold custom autograd nodes with hand-written backward passes (and numba kernels
in ``_kernels``); they did not make a whole training step >= 10 % faster and were removed
(benchmarks/whole_step.py, docs/benchmarks.md). Under autocast they had also mixed bf16
activations with float32 parameters in their backward (issue 14's crash).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def slice_layout(shape: Sequence[int], slice_axis: int | None) -> tuple[int, int, int, int, int]:
    """``(B, C, pre, D, post)`` for ``x.shape`` with the slice axis given as an index into
    the spatial dims (``None`` → one "slice" covering everything, i.e. channel pooling)."""
    b, c, *spatial = (int(s) for s in shape)
    if slice_axis is None:
        n = 1
        for s in spatial:
            n *= s
        return b, c, 1, 1, n
    pre = post = 1
    for s in spatial[:slice_axis]:
        pre *= s
    for s in spatial[slice_axis + 1:]:
        post *= s
    return b, c, pre, spatial[slice_axis], post


def broadcast_shape(shape: Sequence[int], slice_axis: int | None) -> list[int]:
    """Shape that broadcasts a ``(B, C, D)`` tensor against ``x.shape`` along the slice axis
    (``None``: a ``(B, C, 1)`` tensor over every spatial axis)."""
    b, c, *spatial = (int(s) for s in shape)
    return [b, c] + [spatial[i] if i == slice_axis else 1 for i in range(len(spatial))]


def pooled_mean(x5: torch.Tensor) -> torch.Tensor:
    """``(B, C, pre, D, post)`` → per-slice mean ``(B, C, D)``."""
    if x5.shape[2] == 1:
        return x5[:, :, 0].mean(-1)
    return x5.mean(dim=(2, 4))


def pooled_max(x5: torch.Tensor) -> torch.Tensor:
    """``(B, C, pre, D, post)`` → per-slice max ``(B, C, D)``."""
    if x5.shape[2] == 1:
        return x5[:, :, 0].amax(-1)
    return x5.amax(dim=(2, 4))


def eager() -> bool:
    """Not being scripted, traced, exported or compiled (tracers, exporters and
    ``torch.compile`` must see plain ops: they cannot look into numba kernels or custom nodes)."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


def pooled_scale(x: torch.Tensor, slice_axis: int | None, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x * fn(per-slice mean of x)`` broadcast over the pooled axes (``fn``: ``(B, C, D)`` →
    ``(B, C, D)``), plain autograd. (A custom node with a two-pass backward and hand-written
    tiny-network gradients was removed on 2026-12-03: a whole U-Net training step was < 10 %
    faster with it, benchmarks/whole_step.py.)"""
    a = fn(pooled_mean(x.reshape(slice_layout(x.shape, slice_axis))))
    return x * a.contiguous().view(broadcast_shape(x.shape, slice_axis))
