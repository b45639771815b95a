"""Segmentation models, registered by name: ``create_model(name, **kwargs)``.

Every module file in this package registers its models on import.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from attnseg.registry import Entry, Registry

MODELS = Registry("model")
register_model = MODELS.register


def get_model_entry(name: str) -> Entry:
    return MODELS.get(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build registered model ``name``; ``kwargs`` override its documented defaults."""
    return MODELS.create(name, **kwargs)


def list_models(pattern: str | None = None) -> list[str]:
    return MODELS.names(pattern)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameter elements (trainable only by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_all()

__all__ = ["MODELS", "count_parameters", "create_model", "get_model_entry", "list_models", "register_model"]

from attnseg.models.convert import load_reference_checkpoint  # noqa: E402, F401  (re-export)
