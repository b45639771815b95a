"""The speed-up layer of the attention modules: everything that is not a module's plain PyTorch
definition lives in this package.

Each module file (``se.py``, ``slice.py``, ``stn.py``, ...) reads as its plain definition and
makes at most one call here where a faster path may take over; every condition that picks the
faster path is in this package, and the faster path gives the plain path's values (to float
rounding):

* :func:`grid_sample` (``stn``): ``F.grid_sample``; in 2D bilinear training on contiguous
  float32 CPU tensors with numba, PyTorch's forward with a compiled backward (:mod:`.kernels`).
* :func:`combine` (``scse``): ``max(a, b)`` or ``a + b``, in place without autograd.
* :func:`slice_stats` / :func:`scale_slices` (``slice``, ``ksca``, ``pam``): per-slice
  pooling and rescaling in the input's own layout (:mod:`.pooling`), no permuted copies.

Switches: the compiled kernels run only when numba is importable (the optional extra
``accel``; without it PyTorch's ops are used, silently) and ``ATTNSEG_NUMBA`` is not ``0``
(read at call time). No faster path runs while scripting, tracing, exporting or compiling
(:func:`eager`). Which paths exist is decided by whole-training-step measurements
(``benchmarks/whole_step.py``, figures in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from attnseg.attention._accel import kernels
from attnseg.attention._accel.pooling import scale_slices, slice_stats


def eager() -> bool:
    """Not being scripted, traced, exported or compiled (tracers, exporters and
    ``torch.compile`` must see plain ops: they cannot look into numba kernels or custom nodes)."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


def numba_available() -> bool:
    """Whether the compiled kernels are used (numba importable, ``ATTNSEG_NUMBA`` != ``0``)."""
    return kernels.available()


class _Bilinear(torch.autograd.Function):
    """2D ``grid_sample`` (bilinear, zero padding, ``align_corners=False``): PyTorch's own
    (vectorised) forward and the compiled backward of :func:`kernels.bilinear_backward`, which
    computes the corner weights once per point and then scatters/dots channel plane by channel
    plane in the input's own layout (PyTorch's CPU backward is several times its forward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, grid = ctx.saved_tensors
        return kernels.bilinear_backward(x, grid, gy, ctx.needs_input_grad[0], ctx.needs_input_grad[1])


def grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)``.

    ``x`` ``(B, C, *spatial)`` (4-D or 5-D), ``grid`` ``(B, *out_spatial, n)`` in normalised
    coordinates; returns ``(B, C, *out_spatial)``. The compiled backward takes over for 2D
    bilinear sampling when a gradient is needed, in eager mode, for contiguous float32 CPU
    tensors with the kernels available (3D: PyTorch's own; compiled trilinear kernels did not
    pay in a whole step and were removed).
    """
    if (mode == "bilinear" and x.dim() == 4 and torch.is_grad_enabled() and (x.requires_grad or grid.requires_grad)
            and eager() and kernels.applies(x, grid)):
        return _Bilinear.apply(x, grid)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def combine(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    """``max(a, b)`` (``how="max"``) or ``a + b`` (``how="add"``) of two same-shape tensors.

    ``a`` must be a fresh tensor the caller owns: without autograd (inference, eager) the result
    is written into it, saving one full-size tensor. With autograd ``max`` is computed as
    ``b + relu(a - b)`` (equal to float rounding): PyTorch's CPU backward of ``maximum`` is
    several times slower than relu's.
    """
    if not torch.is_grad_enabled() and eager():
        return torch.maximum(a, b, out=a) if how == "max" else a.add_(b)
    if how == "max":
        return b + torch.relu(a - b)
    return a + b


__all__ = ["combine", "eager", "grid_sample", "kernels", "numba_available", "scale_slices", "slice_stats"]
