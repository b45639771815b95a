"""Rebuilding the registered model an attnseg checkpoint describes (file I/O is
:mod:`attnseg.runtime.checkpoint`)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from attnseg import __version__
from attnseg.models import MODELS, create_model
from attnseg.runtime.checkpoint import FORMAT, CheckpointError, load_checkpoint

# prefixes that wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_state_dict(state: dict[str, Any], prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, Any]:
    """``state`` without the key prefix a DDP / DataParallel / torch.compile wrapper adds (when
    every key carries it; applied for each prefix in turn)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def model_checkpoint(model_name: str, model_kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor],
                     **extra: Any) -> dict[str, Any]:
    """The minimal attnseg checkpoint dict for a model (training adds more keys via ``extra``)."""
    return {"format": FORMAT, "attnseg_version": __version__, "model_name": model_name,
            "model_kwargs": dict(model_kwargs), "model": state_dict, **extra}


def build_model_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike, strict: bool = True,
                                map_location: str | torch.device = "cpu",
                                origin: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the registered model a checkpoint describes and load its weights.

    Returns ``(model, checkpoint_dict)``; the model is in eval mode. ``origin``: the file a
    checkpoint dict came from (named in error messages). The checkpoint's ``model.imports``
    are never imported: a model they would register must be imported by the caller.
    """
    where = str(origin) if origin is not None else "checkpoint"
    if not isinstance(ckpt, dict):
        where = str(ckpt)
        ckpt = load_checkpoint(ckpt, map_location)
    missing = [k for k in ("model_name", "model") if k not in ckpt]
    if missing:
        hint = (" It looks like a reference checkpoint: convert it with `attnseg convert-checkpoint`."
                if "net" in ckpt or all(isinstance(v, torch.Tensor) for v in ckpt.values()) else "")
        raise CheckpointError(f"{where}: not an attnseg checkpoint (missing {missing}).{hint}")
    name = ckpt["model_name"]
    imports = ((ckpt.get("config") or {}).get("model") or {}).get("imports") or []
    if name not in MODELS and imports:
        raise CheckpointError(f"{where}: model {name!r} comes from module(s) {list(imports)} named in the "
                              f"checkpoint's model.imports, which a checkpoint never imports by itself; if you "
                              f"trust them, pass --import {' --import '.join(imports)}")
    model = create_model(name, **ckpt.get("model_kwargs", {}))
    model.load_state_dict(unwrap_state_dict(ckpt["model"]), strict=strict)
    return model.eval(), ckpt
