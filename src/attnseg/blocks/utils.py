"""Size helpers shared by models: divisibility checks and pad-then-crop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def check_divisible(shape: Sequence[int], factor: int | Sequence[int], model: str = "model") -> None:
    """Raise ``ValueError`` naming the axis when a spatial size is not a multiple of ``factor``."""
    factors = [factor] * len(shape) if isinstance(factor, int) else list(factor)
    bad = [(i, s, k) for i, (s, k) in enumerate(zip(shape, factors)) if s % k]
    if bad:
        desc = ", ".join(f"axis {i} has size {s}, not a multiple of {k}" for i, s, k in bad)
        raise ValueError(f"{model}: input spatial size {tuple(shape)} is not supported ({desc}); "
                         f"pad the input or use pad_input=True")


def pad_to_multiple(x: torch.Tensor, factor: int | Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial dims of ``(B, C, *spatial)`` at the end up to multiples of ``factor``.

    Returns the padded tensor and the slices that crop an output of the padded size back.
    """
    spatial = x.shape[2:]
    factors = [factor] * len(spatial) if isinstance(factor, int) else list(factor)
    extra = [(-s) % k for s, k in zip(spatial, factors)]
    crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
    if not any(extra):
        return x, crop
    pad: list[int] = []
    for e in reversed(extra):
        pad += [0, e]
    return F.pad(x, pad), crop
