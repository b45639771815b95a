"""Out-of-memory diagnosis for inference: which setting to lower, and by how much.

Sliding-window inference holds the input, the output accumulator (K channels × the padded
volume) and, per network call, ``sw_batch`` windows of ROI voxels with all their activations;
mirroring TTA adds one more window output. The activations dominate and grow linearly with
``sw_batch × ROI voxels``, so when an allocation of ``requested`` bytes fails with ``in_use``
bytes held and ``capacity`` bytes usable, ``need = in_use + requested`` estimates the peak and
``capacity / need`` is the factor by which ``sw_batch × ROI voxels`` should shrink.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

_SIZE = re.compile(r"(?:tried to allocate|Tried to allocate)\s+([\d.]+)\s*(bytes|B|KiB|MiB|GiB|TiB)?", re.I)
_UNITS = {None: 1, "bytes": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure of PyTorch (CUDA, MPS or CPU) or Python."""
    import torch  # on first use: cli.main imports runtime for its error handling, before any command

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "not enough memory" in text or "failed to allocate" in text
    return False


def requested_bytes(exc: BaseException) -> int | None:
    """The failed allocation's size when the message states it (PyTorch's CUDA and CPU allocators)."""
    m = _SIZE.search(str(exc))
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "bytes").lower()])


def memory_state(device: Any) -> tuple[int | None, int | None]:
    """``(in_use, capacity)`` bytes: CUDA allocator reserved / device total, or process RSS /
    RSS + MemAvailable on Linux CPUs; None where unknown."""
    import torch  # on first use (as above)

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(dev)
        return int(total - free), int(total)
    try:
        rss = int(open("/proc/self/statm").read().split()[1]) * _page()
        avail = None
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
        return rss, None if avail is None else rss + avail
    except (OSError, ValueError, IndexError):
        return None, None


def _page() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def out_of_memory_message(exc: BaseException, where: str, *, roi: Sequence[int] | None, sw_batch: int,
                          tta: bool, device: Any = "cpu", options: dict[str, str] | None = None) -> str:
    """One line: where it failed, the estimated need against the memory, and what to lower.

    ``options`` names the user's settings (CLI flags or config keys) for ``roi``, ``sw_batch``
    and ``tta``; defaults are the ``attnseg predict`` flags.
    """
    opt = {"roi": "--roi", "sw_batch": "--sw-batch", "tta": "--tta"} | (options or {})
    req = requested_bytes(exc)
    in_use, capacity = memory_state(device)
    parts = [f"{where}: out of memory"]
    shrink = None
    if req is not None and in_use is not None and capacity:
        need = in_use + req
        over = need - capacity
        if over > 0:
            parts.append(f"estimated need {_gib(need)} exceeds the {_gib(capacity)} usable by "
                         f"{_gib(over)} ({need / capacity:.2f}x)")
        else:
            parts.append(f"a request of {_gib(req)} failed with {_gib(in_use)} in use of {_gib(capacity)}")
        shrink = min(capacity / need, 1.0)
    elif req is not None:
        parts.append(f"a request of {_gib(req)} failed")
    advice = []
    s = 0.5 if shrink is None else 0.9 * shrink  # 10 % margin: the estimate ignores fragmentation
    roi_factor = s
    if sw_batch > 1:
        fit = max(int(sw_batch * s), 1)
        advice.append(f"{opt['sw_batch']} {sw_batch} -> {fit}")
        roi_factor = min(s * sw_batch / fit, 1.0) if fit == 1 else s  # what sw batch 1 still leaves to gain
    if roi and roi_factor < 1.0:
        roi = [int(r) for r in roi]
        side = roi_factor ** (1.0 / len(roi))  # windows scale with their voxel count
        new = [max(8, int(r * side) // 8 * 8) for r in roi]
        if new != roi:
            item = f"{opt['roi']} {'x'.join(map(str, roi))} -> {'x'.join(map(str, new))}"
            if advice:  # sw batch 1 is not enough on its own
                advice[-1] += f" and {item}"
            else:
                advice.append(item)
    if tta:
        advice.append(f"leave out {opt['tta']} (it holds one more window output)")
    parts.append("lower " + ", or ".join(advice) if advice else "use a machine with more memory")
    return "; ".join(parts)
