"""Per-slice pooling in the input's own memory layout (no permuted copies), for the slice modules.

``x`` ``(B, C, *spatial)`` is handled as the 5-D view ``(B, C, pre, D, post)``: ``D`` is the
axis that is not pooled (the slice axis) and ``pre``/``post`` are the products of the spatial
sizes before/after it, so pooling along any axis needs no copy of a contiguous ``x``.

(Custom autograd nodes with hand-written backward passes, and their numba kernels, used to sit
here; none made a whole training step >= 10 % faster and they were removed: benchmarks/whole_step.py,
docs/benchmarks.md. Under autocast they had also mixed bf16 activations with float32 parameters
in their backward, issue 14's crash.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def slice_layout(shape: Sequence[int], slice_axis: int) -> tuple[int, int, int, int, int]:
    """``(B, C, pre, D, post)`` for ``x.shape`` with the slice axis given as an index into the
    spatial dims."""
    b, c, *spatial = (int(s) for s in shape)
    pre = post = 1
    for s in spatial[:slice_axis]:
        pre *= s
    for s in spatial[slice_axis + 1:]:
        post *= s
    return b, c, pre, spatial[slice_axis], post


def broadcast_shape(shape: Sequence[int], slice_axis: int) -> list[int]:
    """Shape that broadcasts a ``(B, C, D)`` tensor against ``x.shape`` along the slice axis."""
    b, c, *spatial = (int(s) for s in shape)
    return [b, c] + [spatial[i] if i == slice_axis else 1 for i in range(len(spatial))]


def slice_stats(x: torch.Tensor, slice_axis: int, want_max: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-slice mean (and max when ``want_max``, else ``None``) of ``x`` ``(B, C, *spatial)``
    over every spatial axis except ``slice_axis``: ``(B, C, D)`` each."""
    x5 = x.reshape(slice_layout(x.shape, slice_axis))
    if x5.shape[2] == 1:  # slice axis first: one reduction over the contiguous last dim
        x4 = x5[:, :, 0]
        return x4.mean(-1), (x4.amax(-1) if want_max else None)
    return x5.mean(dim=(2, 4)), (x5.amax(dim=(2, 4)) if want_max else None)


def scale_slices(x: torch.Tensor, a: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """``x · a`` with ``a`` ``(B, C, D)`` broadcast over every spatial axis but ``slice_axis``."""
    return x * a.contiguous().view(broadcast_shape(x.shape, slice_axis))
