"""Dimension-agnostic layer factories.

Every factory takes ``spatial_dims`` (2 or 3) and returns the matching ``torch.nn`` layer,
so one model class serves 2D and 3D. Norm and activation are given as a name or as
``(name, {kwargs})`` (the MONAI convention), e.g. ``"instance"``,
``("instance", {"affine": True})``, ``("group", {"num_groups": 8})``, ``("leakyrelu", {"negative_slope": 0.1})``.
"""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import nn
from torch.nn import functional as F

LayerSpec = Union[str, tuple[str, dict[str, Any]], None]


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def split_spec(spec: LayerSpec) -> tuple[str | None, dict[str, Any]]:
    """``"name"`` or ``("name", {kw})`` or ``None`` → ``(lower-case name or None, kwargs)``."""
    if spec is None:
        return None, {}
    if isinstance(spec, str):
        return spec.lower(), {}
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], dict):
        return str(spec[0]).lower(), dict(spec[1])
    raise ValueError(f"layer spec must be a name or (name, kwargs), got {spec!r}")


def same_padding(kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1):
    """Padding that keeps the size for odd kernels at stride 1: ``(k - 1) // 2 * dilation``."""
    if isinstance(kernel_size, int) and isinstance(dilation, int):
        return (kernel_size - 1) // 2 * dilation
    ks = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
    ds = (dilation,) * len(ks) if isinstance(dilation, int) else tuple(dilation)
    return tuple((k - 1) // 2 * d for k, d in zip(ks, ds))


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...] = 3,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | None = None,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    bias: bool = True,
) -> nn.Module:
    """``nn.Conv2d``/``nn.Conv3d``; ``padding=None`` means "same" padding for odd kernels."""
    cls = (nn.Conv2d, nn.Conv3d)[check_spatial_dims(spatial_dims) - 2]
    if padding is None:
        padding = same_padding(kernel_size, dilation)
    return cls(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
               bias=bias)


def conv_transpose(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...] = 2,
    stride: int | tuple[int, ...] = 2,
    padding: int | tuple[int, ...] = 0,
    output_padding: int | tuple[int, ...] = 0,
    groups: int = 1,
    bias: bool = True,
) -> nn.Module:
    """``nn.ConvTranspose2d``/``nn.ConvTranspose3d``."""
    cls = (nn.ConvTranspose2d, nn.ConvTranspose3d)[check_spatial_dims(spatial_dims) - 2]
    return cls(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups=groups,
               bias=bias)


def norm(spec: LayerSpec, spatial_dims: int, channels: int) -> nn.Module:
    """Normalisation layer by name: ``batch``, ``instance`` (PyTorch defaults: no affine,
    no running stats; pass ``{"affine": True}`` for learnable scale/shift), ``group``
    (``num_groups``, default 8, clamped to ``channels``), ``layer`` (GroupNorm with one
    group) or ``None`` (identity)."""
    name, kw = split_spec(spec)
    d = check_spatial_dims(spatial_dims)
    if name in (None, "none", "identity"):
        return nn.Identity()
    if name in ("batch", "bn"):
        return (nn.BatchNorm2d, nn.BatchNorm3d)[d - 2](channels, **kw)
    if name in ("instance", "in"):
        return (nn.InstanceNorm2d, nn.InstanceNorm3d)[d - 2](channels, **kw)
    if name in ("group", "gn"):
        groups = min(int(kw.pop("num_groups", 8)), channels)
        return nn.GroupNorm(groups, channels, **kw)
    if name in ("layer", "ln"):
        return nn.GroupNorm(1, channels, **kw)
    raise ValueError(f"unknown norm {name!r}; use batch, instance, group, layer or None")


_ACTS = {
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def act(spec: LayerSpec, channels: int | None = None) -> nn.Module:
    """Activation by name. ``prelu`` has one shared slope (init 0.25);
    ``prelu_channel`` has one slope per channel (needs ``channels``)."""
    name, kw = split_spec(spec)
    if name in (None, "none", "identity"):
        return nn.Identity()
    if name == "prelu":
        return nn.PReLU(**kw)
    if name in ("prelu_channel", "prelu-channel"):
        if channels is None:
            raise ValueError("prelu_channel needs the channel count")
        return nn.PReLU(num_parameters=channels, **kw)
    if name in _ACTS:
        return _ACTS[name](**kw)
    raise ValueError(f"unknown activation {name!r}; use one of {sorted([*_ACTS, 'prelu', 'prelu_channel'])}")


def pool(kind: str, spatial_dims: int, kernel_size: int | tuple[int, ...] = 2,
         stride: int | tuple[int, ...] | None = None, padding: int = 0) -> nn.Module:
    """``max``/``avg`` pooling or ``adaptive_max``/``adaptive_avg`` (``kernel_size`` is then
    the output size)."""
    d = check_spatial_dims(spatial_dims)
    kind = kind.lower()
    if kind == "max":
        return (nn.MaxPool2d, nn.MaxPool3d)[d - 2](kernel_size, stride, padding)
    if kind == "avg":
        return (nn.AvgPool2d, nn.AvgPool3d)[d - 2](kernel_size, stride, padding)
    if kind == "adaptive_max":
        return (nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)[d - 2](kernel_size)
    if kind == "adaptive_avg":
        return (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[d - 2](kernel_size)
    raise ValueError(f"unknown pooling {kind!r}; use max, avg, adaptive_max or adaptive_avg")


def dropout(spatial_dims: int, p: float = 0.0) -> nn.Module:
    """Channel dropout (``Dropout2d``/``Dropout3d``); identity when ``p == 0``."""
    if p <= 0:
        return nn.Identity()
    return (nn.Dropout2d, nn.Dropout3d)[check_spatial_dims(spatial_dims) - 2](p)


def interp_mode(spatial_dims: int, mode: str = "linear") -> str:
    """``linear`` → ``bilinear``/``trilinear``; ``nearest`` and others pass through."""
    if mode == "linear":
        return ("bilinear", "trilinear")[check_spatial_dims(spatial_dims) - 2]
    return mode


def resize(x: torch.Tensor, size: list[int] | tuple[int, ...], mode: str = "linear") -> torch.Tensor:
    """Resize ``(B, C, *spatial)`` to ``size`` (``align_corners=False``); no-op if already that size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    m = interp_mode(x.dim() - 2, mode)
    if m in ("nearest", "area", "nearest-exact"):
        return F.interpolate(x, size=list(size), mode=m)
    return F.interpolate(x, size=list(size), mode=m, align_corners=False)
