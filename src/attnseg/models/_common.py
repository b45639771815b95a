"""Pieces shared by the backbone files: the output convention, per-site attention plug-ins,
feature-size bookkeeping and the residual encoder used by FCN and DeepLabV3+.

Files starting with ``_`` are not auto-imported by :mod:`attnseg.models`; model files import
this one explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from attnseg.attention.plugin import AttentionPlugin, AttentionSite
from attnseg.blocks import ConvNormAct, ResidualUnit, check_divisible, resize
from attnseg.blocks.factories import LayerSpec
from attnseg.blocks.factories import act as make_act

Size = Sequence[int]


class SitePlugins:
    """One :class:`AttentionPlugin` for the whole model, optionally overridden per site.

    ``site_attention`` maps a site name to ``{"attention": ..., "attention_kwargs": ...}``;
    that site then uses its own module(s) whatever ``attention_at`` says (the AMIS V-Net
    presets put channel SE at the bottleneck and slice+channel SE everywhere else).
    """

    def __init__(
        self,
        attention: str | Sequence[str] | None = None,
        attention_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        attention_at: str | Iterable[str] = ("encoder", "decoder"),
        site_attention: dict[str, dict[str, Any]] | None = None,
        supported: Sequence[str] = ("encoder", "decoder", "skip", "bottleneck"),
        model: str = "model",
    ) -> None:
        at = (attention_at,) if isinstance(attention_at, str) else tuple(attention_at)
        overrides = dict(site_attention or {})
        unsupported = [s for s in at if s not in supported] if attention not in (None, "", "none") else []
        unsupported += [s for s in overrides if s not in supported]
        if unsupported:
            raise ValueError(f"{model} has no attention site(s) {sorted(set(unsupported))}; "
                             f"it supports {tuple(supported)}")
        self.default = AttentionPlugin(attention, attention_kwargs, [s for s in at if s not in overrides])
        self.overrides = {
            site: AttentionPlugin(spec.get("attention"), spec.get("attention_kwargs"), (site,))
            for site, spec in overrides.items()
        }

    def plugin(self, site: str) -> AttentionPlugin:
        return self.overrides.get(site, self.default)

    def enabled(self, site: str) -> bool:
        return self.plugin(site).enabled(site)

    def build(self, site: str, channels: int, spatial_dims: int, *, gate_channels: int | None = None,
              spatial_size: Size | None = None) -> AttentionSite:
        """Attention module for ``site`` (identity when the site is off). Unknown entries
        (``None``) of ``spatial_size`` reach size-bound modules as 0 (e.g. ``(144, None, None)``
        when only the slice count is fixed)."""
        if spatial_size is not None:
            spatial_size = tuple(0 if s is None else int(s) for s in spatial_size)
        return self.plugin(site).build(site, channels, spatial_dims, gate_channels=gate_channels,
                                       spatial_size=spatial_size)


def level_sizes(input_size: Size | None, strides: Sequence[int | Sequence[int]], mode: str = "floor",
                ) -> list[tuple[int, ...] | None]:
    """Feature-map size after each cumulative stride (first entry = ``input_size``).

    ``mode="floor"`` matches pooling / kernel-2 stride-2 convs, ``"ceil"`` matches k3 p1 s2 convs.
    Returns ``None`` entries when ``input_size`` is unknown; ``None`` axes stay ``None``.
    """
    if input_size is None:
        return [None] * (len(strides) + 1)
    sizes = [tuple(None if s is None else int(s) for s in input_size)]
    for st in strides:
        st = (st,) * len(sizes[-1]) if isinstance(st, int) else tuple(st)
        prev = sizes[-1]
        sizes.append(tuple(None if p is None else (p // s if mode == "floor" else -(-p // s))
                           for p, s in zip(prev, st)))
    return sizes


class SegmentationNet(nn.Module):
    """Base of every backbone: the output convention.

    Subclasses implement ``_forward(x, aux) -> dict`` with at least ``"out"`` (logits); ``aux``
    says whether deep-supervision / auxiliary outputs are wanted. ``forward`` returns that dict
    in training mode and the ``out`` tensor in eval mode (passed through ``eval_activation``:
    ``None`` = logits, the library default; ``"softmax"``/``"sigmoid"`` reproduce references
    that normalise in eval mode). ``predict(x)`` is the eval path whatever the mode.

    ``pad_input=True`` zero-pads inputs up to the model's size multiple and crops outputs back;
    otherwise a size the model cannot take raises a ``ValueError`` naming the divisibility.
    """

    size_multiple: int = 1  # spatial sizes must be multiples of this (set by subclasses)

    def __init__(self, eval_activation: str | None = None, pad_input: bool = False) -> None:
        super().__init__()
        if eval_activation not in (None, "softmax", "sigmoid"):
            raise ValueError(f"eval_activation must be None, 'softmax' or 'sigmoid', got {eval_activation!r}")
        self.eval_activation = eval_activation
        self.pad_input = pad_input

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        """Hook for size checks beyond ``size_multiple``."""

    def _run(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        dims = x.dim() - 2
        if dims != self.spatial_dims:
            raise ValueError(f"{type(self).__name__} was built for {self.spatial_dims}D inputs "
                             f"(B, C, *{self.spatial_dims} sizes); got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channels, "
                             f"got {x.shape[1]} (shape {tuple(x.shape)})")
        m = self.size_multiple
        if m > 1 and self.pad_input:
            extra = [(-s) % m for s in x.shape[2:]]
            if any(extra):
                pad: list[int] = []
                for e in reversed(extra):
                    pad += [0, e]
                crop = (slice(None), slice(None), *(slice(0, s) for s in x.shape[2:]))
                outs = self._forward(nn.functional.pad(x, pad), aux)
                return {k: (v[crop] if v.dim() == x.dim() and v.shape[2:] != x.shape[2:] else v)
                        for k, v in outs.items()}
        elif m > 1:
            check_divisible(tuple(x.shape[2:]), m, type(self).__name__)
        self._check_input(x)
        return self._forward(x, aux)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        if self.eval_activation == "softmax":
            return torch.softmax(y, dim=1)
        if self.eval_activation == "sigmoid":
            return torch.sigmoid(y)
        return y

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """``(B, in_channels, *spatial)`` → dict of logits (training) or ``out`` (eval)."""
        if self.training:
            return self._run(x, True)
        return self._activate(self._run(x, False)["out"])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-path output ``(B, out_channels, *spatial)`` regardless of ``self.training``."""
        return self._activate(self._run(x, False)["out"])


def full_res(y: torch.Tensor, size: Size) -> torch.Tensor:
    """Resize logits to ``size`` (linear interpolation; no-op when already that size)."""
    return resize(y, list(size), "linear")


class ResidualEncoder(nn.Module):
    """ResNet-style encoder shared by FCN and DeepLabV3+.

    Stem: ConvNormAct(in → features[0], k3, stride ``strides[0]``). Stage i ≥ 1: ``blocks[i]``
    residual units (the first carries stride ``strides[i]`` and dilation 1, later ones use
    ``dilations[i]``). Returns the list of stage outputs, finest first. Every stage output passes
    the ``encoder`` attention site (the last one the ``bottleneck`` site).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int] | None = None,
        *,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        plugins: SitePlugins | None = None,
        input_size: Size | None = None,
    ) -> None:
        super().__init__()
        n = len(features)
        if not (len(blocks) == len(strides) == n):
            raise ValueError(f"features, blocks and strides need one entry per stage; got {len(features)}, "
                             f"{len(blocks)}, {len(strides)}")
        dilations = list(dilations or [1] * n)
        plugins = plugins or SitePlugins()
        sizes = level_sizes(input_size, strides, "ceil")
        self.stem = ConvNormAct(spatial_dims, in_channels, features[0], 3, strides[0], norm=norm, act=act)
        stages = []
        for i in range(1, n):
            units = []
            for b in range(max(blocks[i], 1)):
                cin = features[i - 1] if b == 0 else features[i]
                units.append(_residual(spatial_dims, cin, features[i], strides[i] if b == 0 else 1,
                                              dilations[i] if b > 0 or strides[i] == 1 else 1, norm, act))
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.attn = nn.ModuleList(
            plugins.build("bottleneck" if i == n - 1 else "encoder", features[i], spatial_dims,
                          spatial_size=sizes[i + 1]) for i in range(n))
        self.features = tuple(features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        x = self.attn[0](self.stem(x))
        outs.append(x)
        for stage, attn in zip(self.stages, self.attn[1:]):
            x = attn(stage(x))
            outs.append(x)
        return outs


def _residual(spatial_dims: int, cin: int, cout: int, stride: int, dilation: int, norm: LayerSpec,
              act: LayerSpec) -> nn.Module:
    """Basic residual unit; the dilated variant exists because ResidualUnit has no dilation."""
    if dilation == 1:
        return ResidualUnit(spatial_dims, cin, cout, stride, norm=norm, act=act)
    return _DilatedResidual(spatial_dims, cin, cout, stride, dilation, norm, act)


class _DilatedResidual(nn.Module):
    """``act(conv_b(conv_a(x)) + shortcut(x))`` with dilated 3×3 convolutions."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, stride: int, dilation: int, norm: LayerSpec,
                 act: LayerSpec) -> None:
        super().__init__()
        self.conv_a = ConvNormAct(spatial_dims, cin, cout, 3, stride, dilation=dilation, norm=norm, act=act)
        self.conv_b = ConvNormAct(spatial_dims, cout, cout, 3, 1, dilation=dilation, norm=norm, act=None)
        self.shortcut = (nn.Identity() if cin == cout and stride == 1 else
                         ConvNormAct(spatial_dims, cin, cout, 1, stride, norm=norm, act=None))
        self.act = make_act(act, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_b(self.conv_a(x)) + self.shortcut(x))
