"""CPU fast paths for training (exact in fp32).

* **oneDNN for every 3D convolution.** For batch-1 inputs in the default (contiguous) layout
  PyTorch's CPU heuristic routes ``conv3d`` to the im2col ``slow_conv3d`` kernel; in the
  ``channels_last_3d`` memory format it picks the oneDNN (mkldnn) kernels, forward and
  backward. :func:`prepare_model` / :func:`prepare_input` convert model and inputs.
* **Allocator.** glibc returns large blocks (activation buffers of tens of MB) to the kernel
  with ``munmap`` when freed and maps them again at the next step, so every step pays page
  faults on fresh zero pages. :func:`tune_malloc` sets ``M_MMAP_MAX=0`` (large blocks come
  from the heap) and a huge ``M_TRIM_THRESHOLD`` (the heap is never shrunk) with ``mallopt``,
  the in-process equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=…`` in the
  environment; it only affects allocations made afterwards, so the CLI calls it first thing.

The inference package's ``attnseg.infer.fastpath`` is preferred when it exists (same API).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch
from torch import nn

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def tune_malloc(trim_threshold: int = 1 << 40) -> bool:
    """Keep freed memory in the process (glibc only); returns True when applied."""
    global _done
    if _done:
        return True
    if os.environ.get("ATTNSEG_NO_MALLOC_TUNING"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(trim_threshold, 2**31 - 1))) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok


def enable_cpu_fastpaths() -> None:
    """Process-wide settings: allocator tuning and oneDNN enabled."""
    tune_malloc()
    torch.backends.mkldnn.enabled = True


def uses_3d(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in model.modules())


def prepare_model(model: nn.Module, spatial_dims: int | None = None) -> nn.Module:
    """Move a 3D model's weights to ``channels_last_3d`` (CPU only; a no-op for 2D models)."""
    if spatial_dims == 3 or (spatial_dims is None and uses_3d(model)):
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    """``channels_last_3d`` for 5-D CPU tensors, unchanged otherwise."""
    if x.dim() == 5 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x
