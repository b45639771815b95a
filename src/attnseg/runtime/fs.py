"""File-system faults: recognising a full disk, saying how much space a write needs, and
removing the temporary files a killed process left behind."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attnseg.runtime.errors import DiskFullError

# no space on the device, quota exceeded, file larger than RLIMIT_FSIZE allows
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a write refused for lack of space."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes for an unprivileged user on the file system holding ``folder`` (None if unknown)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def disk_full_error(path: str | os.PathLike, needed: int, what: str = "file",
                    cause: BaseException | None = None) -> DiskFullError:
    """A :class:`DiskFullError` with one line: the file, the space it needs and what is free.

    ``needed``: bytes the write needs (an estimate for compressed files: their raw size).
    """
    path = Path(path)
    free = free_bytes(path.parent)
    reason = ""
    if isinstance(cause, OSError) and cause.errno == errno.EFBIG:
        reason = " (the file-size limit, ulimit -f, was reached)"
    elif isinstance(cause, OSError) and cause.errno == errno.EDQUOT:
        reason = " (disk quota exceeded)"
    free_s = "unknown" if free is None else _mib(free)
    return DiskFullError(f"{path}: no space to write the {what}{reason}: it needs about {_mib(needed)}, "
                         f"{free_s} free on that file system; {path.name} was not written (an earlier file of that "
                         f"name is unchanged)")


def payload_bytes(obj: Any) -> int:
    """Bytes of the tensors and arrays in a nested dict/list (what a checkpoint will take on disk)."""
    import numpy as np  # on first use: cli.main imports runtime for its error handling, before any command
    import torch  # likewise (keeps `attnseg --help` free of torch)

    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            total += o.numel() * o.element_size()
        elif isinstance(o, np.ndarray):
            total += o.nbytes
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, (str, bytes)):
            total += len(o)
        else:
            total += 8
    return total


def check_free_space(path: str | os.PathLike, needed: int, what: str = "file") -> None:
    """Raise :class:`DiskFullError` before writing when the file system reports less free space
    than ``needed`` (a quota or a file-size limit is only found by writing)."""
    free = free_bytes(Path(path).parent)
    if free is not None and free < needed:
        raise disk_full_error(path, needed, what)


def remove_stale_temp_files(folder: str | os.PathLike, patterns: Iterable[str]) -> list[Path]:
    """Delete files matching ``patterns`` in ``folder`` (temporary files of a killed writer).

    Call it only while holding the folder's :class:`~attnseg.runtime.lock.FolderLock`, so no
    live writer owns them. Returns the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for pat in patterns:
        for f in folder.glob(pat):
            if f.is_file():
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed


def default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file
    (``mkstemp`` creates 0600, which a renamed temporary file would otherwise keep)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only where /proc is missing
    os.umask(mask)
    return 0o666 & ~mask
