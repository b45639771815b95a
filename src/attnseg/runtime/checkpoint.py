"""Checkpoint files: atomic writes and safe loading (no model code; rebuilding the model a
checkpoint describes is :mod:`attnseg.models.checkpoint`).

An attnseg checkpoint is a plain dict (only tensors, numbers, strings, lists and dicts, so
it loads with ``torch.load(weights_only=True)``)::

    {"format": "attnseg-checkpoint", "attnseg_version": str,
     "model_name": str, "model_kwargs": dict, "model": state_dict,
     # training checkpoints add: "optimizer", "scheduler", "scaler", "epoch", "iteration",
     # "rng", "config", ...}
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from attnseg.runtime.fs import check_free_space, default_file_mode, disk_full_error, is_disk_full, payload_bytes

FORMAT = "attnseg-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe or not an attnseg checkpoint."""


class _Writer:
    """File object for ``torch.save`` that keeps the ``OSError`` of a failed write: PyTorch's
    zip writer reports it only as ``RuntimeError: unexpected pos``, losing ENOSPC/EDQUOT/EFBIG."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically: a temporary file in the same folder is written,
    flushed to disk and renamed over ``path``, so a crash never leaves a half-written file.

    A full disk (or quota, or file-size limit) raises
    :class:`~attnseg.runtime.errors.DiskFullError` naming the file and the space it needs; the
    temporary file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = payload_bytes(obj)
    check_free_space(path, needed, "checkpoint")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    writer = None
    try:
        os.fchmod(fd, default_file_mode())  # the user's umask, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            writer = _Writer(fh)
            torch.save(obj, writer)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = writer.error if writer is not None and writer.error is not None else exc
        if is_disk_full(cause):
            raise disk_full_error(path, needed, "checkpoint", cause) from exc
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # PyTorch raises many types here; the user gets one line naming the file
        raise CheckpointError(_load_error(path, exc)) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def _load_error(path: Path, exc: BaseException) -> str:
    """One line for a checkpoint ``torch.load`` refused: never PyTorch's multi-paragraph text
    (which suggests ``weights_only=False``, i.e. running whatever code the file holds)."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and found:
        return (f"{path}: refused to load: the file holds Python objects ({found.group(1)}) besides tensors and "
                f"plain containers, and unpickling them could run code; attnseg loads checkpoints with "
                f"weights_only=True only")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        return f"{path}: empty file, not a checkpoint"
    if head == b"PK\x03\x04" or zipfile.is_zipfile(path):
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "weights_only" in first or "weights only" in first.lower():
            first = type(exc).__name__
        return f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {first.split('. ')[0][:160]}"
    if head[:1] != b"\x80":  # neither a zip archive (torch.save) nor a pickle (legacy format)
        return f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
    return f"{path}: not a readable PyTorch checkpoint (corrupt or truncated legacy pickle: {type(exc).__name__})"
