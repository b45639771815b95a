"""Attention modules, registered by name.

Every module is built as ``create_attention(name, channels=C, spatial_dims=2|3, **kwargs)``
and maps ``(B, C, *spatial)`` to the same shape (gates, marked ``gated=True`` in the
registry, take ``(x, g)``). Every module file in this package registers itself on import.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from attnseg.registry import Entry, Registry

# The tags an attention module may declare at registration, with the value it gets otherwise.
ATTENTION_TAGS: dict[str, Any] = {
    "gated": False,  # takes (x, g): a gate, usable at "skip" sites only
    "plugin_test": True,  # usable as a plug-in (False: helpers such as key-slice selection)
}

ATTENTION = Registry("attention module", tags=ATTENTION_TAGS)
register_attention = ATTENTION.register


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def get_attention(name: str) -> Entry:
    return ATTENTION.get(name)


def create_attention(name: str, channels: int, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """Build attention module ``name`` for ``channels`` feature maps in ``spatial_dims`` D."""
    return ATTENTION.create(name, channels=channels, spatial_dims=spatial_dims, **kwargs)


def list_attention(pattern: str | None = None) -> list[str]:
    return ATTENTION.names(pattern)


_load_all()

__all__ = ["ATTENTION", "ATTENTION_TAGS", "create_attention", "get_attention", "list_attention", "register_attention"]
