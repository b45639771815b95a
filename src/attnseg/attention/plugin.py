"""The attention plug-in mechanism shared by every backbone (it looks modules up in the
attention registry, so it lives here, above :mod:`attnseg.blocks`).

A backbone takes ``attention="name"``, ``attention_kwargs={...}`` and
``attention_at=("encoder", "decoder", "skip", "bottleneck")``, builds one
:class:`AttentionPlugin` from them and asks it for a module at each site it offers:

* ``encoder``/``decoder``/``bottleneck``: after the stage's convolutions, ``y = site(x)``;
* ``skip``: on the skip tensor before it joins the decoder, ``y = site(skip, g)``, where
  ``g`` is the coarser decoder tensor (used by gate modules such as ``ag``; ignored by
  self-attention modules).

Sites not listed in ``attention_at`` (or with ``attention=None``) get a pass-through, so the
backbone code is the same whether attention is on or off.

``attention`` may also be a sequence of names applied one after another at each site (e.g.
``["slice", "cse"]``, the reference's slice-then-channel SE); ``attention_kwargs`` is then a
dict shared by all or a list with one dict per name. Gates cannot be chained.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import torch
from torch import nn

from attnseg.attention import get_attention

SITES: tuple[str, ...] = ("encoder", "decoder", "skip", "bottleneck")


class AttentionSite(nn.Module):
    """Wraps an attention module so every site is called as ``site(x, g=None)``.

    With ``module=None`` it is the identity and holds no parameters.
    """

    def __init__(self, module: nn.Module | None = None, gated: bool = False) -> None:
        super().__init__()
        self.attn = module
        self.gated = gated

    def forward(self, x: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.attn is None:
            return x
        if self.gated:
            if g is None:
                raise ValueError("this attention gate needs a gating tensor g")
            return self.attn(x, g)
        return self.attn(x)


class AttentionPlugin:
    """Builds :class:`AttentionSite` modules for a backbone from plain keyword arguments."""

    def __init__(
        self,
        attention: str | Sequence[str] | None = None,
        attention_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        attention_at: str | Iterable[str] = ("encoder", "decoder"),
    ) -> None:
        if isinstance(attention_at, str):
            attention_at = (attention_at,)
        at = tuple(attention_at)
        bad = [s for s in at if s not in SITES]
        if bad:
            raise ValueError(f"attention_at has unknown sites {bad}; choose from {SITES}")
        if attention is None or isinstance(attention, str):
            names = [] if attention in (None, "", "none") else [attention]
        else:
            names = [a for a in attention if a not in (None, "", "none")]
        if isinstance(attention_kwargs, (list, tuple)):
            if len(attention_kwargs) != len(names):
                raise ValueError(f"attention_kwargs has {len(attention_kwargs)} dicts for {len(names)} modules")
            kwargs_list = [dict(k or {}) for k in attention_kwargs]
        else:
            kwargs_list = [dict(attention_kwargs or {}) for _ in names]
        self.names, self.kwargs_list, self.at = names, kwargs_list, at
        self.name = "+".join(names) if names else None
        self.entries = [get_attention(n) for n in names]  # fails early on an unknown name
        self.gated = [bool(e.tags.get("gated", False)) for e in self.entries]
        if any(self.gated) and len(names) > 1:
            raise ValueError(f"attention gates cannot be chained with other modules: {names}")
        if any(self.gated) and any(s != "skip" for s in self.at):
            raise ValueError(f"attention {self.name!r} is a gate (needs a gating signal) and only "
                             f"works at the 'skip' site; got attention_at={self.at}")

    def enabled(self, site: str) -> bool:
        if site not in SITES:
            raise ValueError(f"unknown attention site {site!r}; choose from {SITES}")
        return self.name is not None and site in self.at

    def build(
        self,
        site: str,
        channels: int,
        spatial_dims: int,
        *,
        gate_channels: int | None = None,
        spatial_size: Sequence[int] | None = None,
    ) -> AttentionSite:
        """Module for one site. ``gate_channels`` is the width of the gating tensor (skip
        sites); ``spatial_size`` is the feature-map size at the site when the backbone knows
        it (needed only by size-bound modules such as fixed-form slice attention)."""
        if not self.enabled(site):
            return AttentionSite(None)
        modules = []
        for entry, gated, extra in zip(self.entries, self.gated, self.kwargs_list):
            kwargs: dict[str, Any] = {"channels": channels, "spatial_dims": spatial_dims, **extra}
            params = inspect.signature(entry.fn).parameters
            if gated:
                kwargs["gate_channels"] = gate_channels if gate_channels is not None else channels
            if "spatial_size" in params and spatial_size is not None and "spatial_size" not in extra:
                kwargs["spatial_size"] = tuple(int(s) for s in spatial_size)
            modules.append(entry.build(**kwargs))
        module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)
        return AttentionSite(module, gated=self.gated[0])

    def __repr__(self) -> str:
        return f"AttentionPlugin({self.name!r}, at={self.at}, kwargs={self.kwargs_list})"
