"""The speed-up layer of the attention modules: everything that is not a module's plain PyTorch
definition lives in this package.

Each module file (``se.py``, ``slice.py``, ``stn.py``, ...) reads as its plain definition and
makes at most one call here where a faster path may take over; every condition that picks the
faster path is in this package, and the faster path gives the plain path's values (to float
rounding):

* :func:`combine` (``scse``): ``max(a, b)`` or ``a + b``, in place without autograd.
* :func:`slice_stats` / :func:`scale_slices` (``slice``, ``ksca``, ``pam``): per-slice
  pooling and rescaling in the input's own layout (:mod:`.pooling`), no permuted copies.

No faster path runs while scripting, tracing, exporting or compiling (:func:`eager`). Which
paths exist is decided by whole-training-step measurements (``benchmarks/whole_step.py``,
figures in ``docs/benchmarks.md``): the numba kernels and hand-written backward passes that
used to live here were all removed, none made a whole step >= 10 % faster than plain autograd
or ``torch.compile``.
"""

from __future__ import annotations

import torch

from attnseg.attention._accel.pooling import scale_slices, slice_stats


def eager() -> bool:
    """Not being scripted, traced, exported or compiled (tracers, exporters and
    ``torch.compile`` must see plain ops: in-place shortcuts would hide what they trace)."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


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


__all__ = ["combine", "eager", "scale_slices", "slice_stats"]
