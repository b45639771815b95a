"""Which (backbone, attention, site) combinations are valid — defined here, once, from the
registries' tags, and used by the smoke tests and ``attnseg zoo``.

* A **backbone** is a registered model tagged with the attention ``sites`` it offers (and not a
  preset of another model, i.e. no ``preset_of`` tag).
* An **attention module** is usable as a plug-in unless tagged ``plugin_test=False`` (helpers
  such as key-slice selection that do not map ``x`` to an attended ``x``).
* Gates (``gated=True``) only work at ``skip`` sites (they need the coarser tensor as ``g``);
  everything else works at every site the backbone offers, in every spatial dimensionality
  that both the backbone and the module support. Size-bound modules (fixed-form slice
  attention) additionally need the backbone's ``input_size``.
"""

from __future__ import annotations

from attnseg.attention import ATTENTION, get_attention
from attnseg.models import MODELS, get_model_entry


def list_backbones() -> list[str]:
    """Registered backbones (models tagged with ``sites``, presets excluded), sorted."""
    return [e.name for e in MODELS.entries() if e.tags.get("sites") and not e.tags.get("preset_of")]


def list_plugin_attention() -> list[str]:
    """Registered attention modules usable through the plug-in, sorted."""
    return [e.name for e in ATTENTION.entries() if e.tags.get("plugin_test", True)]


def valid_sites(backbone: str, attention: str, spatial_dims: int = 3) -> tuple[str, ...]:
    """Sites of ``backbone`` where ``attention`` can be plugged in ``spatial_dims`` D (may be empty)."""
    model = get_model_entry(backbone)
    att = get_attention(attention)
    sites = tuple(model.tags.get("sites", ()))
    if spatial_dims not in model.dims or spatial_dims not in att.dims or not att.tags.get("plugin_test", True):
        return ()
    if att.tags.get("gated", False):
        return ("skip",) if "skip" in sites else ()
    return sites


def valid_combinations(spatial_dims: int = 3) -> list[tuple[str, str, str]]:
    """Every valid ``(backbone, attention, site)`` triple for ``spatial_dims``."""
    return [(b, a, s) for b in list_backbones() for a in list_plugin_attention()
            for s in valid_sites(b, a, spatial_dims)]
