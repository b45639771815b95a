"""Process-wide CPU settings: glibc malloc thresholds for the large, short-lived activation
buffers of 3D training and sliding-window inference.

Nothing here runs on import: the CLI (``attnseg predict``) and the trainer (``train.fastpath:
true``) opt in by calling :func:`enable_cpu_fastpaths`. The per-model fast paths (oneDNN
convolutions, channels-last) are :mod:`attnseg.infer.fastpath`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

import torch

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_STATE: dict[str, Any] = {}


def tune_malloc(trim_threshold: int = 1 << 30, disable_mmap: bool = True) -> bool:
    """Ask glibc to keep large freed blocks for reuse instead of returning them to the kernel.

    ``M_MMAP_MAX = 0`` serves every block from the heap (the mmap threshold itself cannot be
    raised above 32 MiB, smaller than one activation map of a 128^3 window) and
    ``M_TRIM_THRESHOLD = trim_threshold`` keeps up to that many free bytes at the heap top.
    Returns False where glibc's ``mallopt`` is unavailable (musl, macOS, Windows): nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1))) == 1
    if disable_mmap:
        ok = mallopt(_M_MMAP_MAX, 0) == 1 and ok
    _STATE["malloc"] = ok
    return ok


def ensure_malloc_env(env: dict[str, str] | None = None) -> None:
    """Re-execute the current process once with glibc malloc environment variables set.

    Alternative to :func:`tune_malloc` for code that must set the thresholds before the
    interpreter allocates anything. Does nothing if the variables are already set (so it
    cannot loop) or when ``ATTNSEG_NO_REEXEC`` is set.
    """
    env = env or {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    if os.environ.get("ATTNSEG_NO_REEXEC") or all(os.environ.get(k) == v for k, v in env.items()):
        return
    new_env = {**os.environ, **env}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], new_env)


def enable_cpu_fastpaths(malloc: bool = True) -> dict[str, Any]:
    """Process-wide CPU settings for inference/training; returns what was applied."""
    applied = {"malloc": tune_malloc() if malloc else False,
               "mkldnn": torch.backends.mkldnn.is_available(),
               "threads": torch.get_num_threads()}
    _STATE.update(applied)
    return applied
