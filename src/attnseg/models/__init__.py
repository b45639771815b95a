"""Segmentation models, registered by name: ``create_model(name, **kwargs)``.

Every module file in this package registers its models on import.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from attnseg.registry import Entry, Registry

# The tags a model may declare at registration (``register_model(name, ..., divisor=4)``) and the
# value a model that declares none gets (third-party models included); any other tag is an error.
# Tags about a built model describe its *test configuration*: the registry defaults overridden by
# ``test_kwargs``, in every spatial dimensionality the entry lists in ``dims``.
MODEL_TAGS: dict[str, Any] = {
    # attention sites the backbone offers ("encoder", "decoder", "skip", ...); () = not a backbone
    "sites": (),
    # where attention goes when ``attention_at`` is not given (the constructor's default)
    "default_sites": ("encoder",),
    # the generic model this entry is a preset of (presets are not backbones of their own)
    "preset_of": None,
    # keyword names of the input and output channel counts (None: the model has no such keyword);
    # ``attnseg train --in_channels/--out_channels`` sets these
    "channel_args": ("in_channels", "out_channels"),
    # keyword of the feature width(s), an int or a per-level list (None: none)
    "width_arg": "features",
    # small constructor kwargs for the registry-wide tests (None: the defaults)
    "test_kwargs": None,
    # a spatial size (or full (B, C, *spatial) shape) the test configuration accepts (None: probe)
    "test_input": None,
    # every spatial input size must be a multiple of this at the test configuration (1: any size)
    "divisor": 1,
    # training-mode output keys beyond "out" at the test configuration (deep supervision, aux heads)
    "aux_outputs": (),
    # input size of benchmarks/models.py (None: its default)
    "bench_input": None,
}

MODELS = Registry("model", tags=MODEL_TAGS)
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

__all__ = ["MODELS", "MODEL_TAGS", "count_parameters", "create_model", "get_model_entry", "list_models",
           "register_model"]

from attnseg.models.convert import load_reference_checkpoint  # noqa: E402, F401  (re-export)
