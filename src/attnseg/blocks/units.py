"""Conv-norm-activation units, residual units and upsampling, for 2D and 3D.

Layer order is a string over ``c`` (convolution), ``n`` (normalisation), ``a`` (activation)
and ``d`` (dropout): ``"cna"`` is the usual post-activation order, ``"can"`` is the AMIS
reference's conv → PReLU → instance norm, ``"nac"`` is pre-activation. A norm placed before
the convolution normalises the input channels.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from attnseg.blocks import factories as f
from attnseg.blocks.factories import LayerSpec


class ConvNormAct(nn.Sequential):
    """One convolution with optional norm, activation and dropout in a chosen ``order``.

    Children are named ``conv``, ``norm``, ``act`` and ``drop`` so state-dict keys read
    like the diagram. ``bias=None`` puts a bias on the convolution only when no norm
    follows it. ``transposed=True`` uses a transposed convolution.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 1,
        *,
        padding: int | tuple[int, ...] | None = None,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        norm: LayerSpec = "instance",
        act: LayerSpec = "relu",
        order: str = "cna",
        bias: bool | None = None,
        dropout: float = 0.0,
        transposed: bool = False,
        output_padding: int | tuple[int, ...] = 0,
    ) -> None:
        if "c" not in order or any(ch not in "cnad" for ch in order) or len(set(order)) != len(order):
            raise ValueError(f"order must contain 'c' once and only letters c, n, a, d; got {order!r}")
        norm_name, _ = f.split_spec(norm)
        has_norm = "n" in order and norm_name not in (None, "none", "identity")
        if bias is None:
            bias = not (has_norm and order.index("n") > order.index("c"))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        conv_done = False
        for ch in order:
            width = out_channels if conv_done else in_channels
            if ch == "c":
                if transposed:
                    pad = 0 if padding is None else padding
                    layers["conv"] = f.conv_transpose(spatial_dims, in_channels, out_channels, kernel_size,
                                                      stride, pad, output_padding, groups, bias)
                else:
                    layers["conv"] = f.conv(spatial_dims, in_channels, out_channels, kernel_size, stride,
                                            padding, dilation, groups, bias)
                conv_done = True
            elif ch == "n" and has_norm:
                layers["norm"] = f.norm(norm, spatial_dims, width)
            elif ch == "a" and f.split_spec(act)[0] not in (None, "none", "identity"):
                layers["act"] = f.act(act, width)
            elif ch == "d" and dropout > 0:
                layers["drop"] = f.dropout(spatial_dims, dropout)
        super().__init__(layers)
        self.in_channels, self.out_channels = in_channels, out_channels


class ResidualUnit(nn.Module):
    """Two convolutions with a shortcut: ``act(conv_b(conv_a(x)) + shortcut(x))``.

    ``conv_a`` carries the stride and an activation; ``conv_b`` has none. The shortcut is a
    1×1 conv-norm when the width or the stride changes (or ``shortcut="conv"``), else the
    identity. ``final_act=False`` leaves the sum un-activated (pre-activation styles).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int | tuple[int, ...] = 1,
        kernel_size: int | tuple[int, ...] = 3,
        *,
        norm: LayerSpec = "instance",
        act: LayerSpec = "relu",
        order: str = "cna",
        shortcut: str = "auto",
        final_act: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        kw = dict(norm=norm, order=order)
        self.conv_a = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, stride, act=act,
                                  dropout=dropout, **kw)
        self.conv_b = ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, 1, act=None, **kw)
        self.shortcut = _make_shortcut(spatial_dims, in_channels, out_channels, stride, shortcut, norm, order)
        self.act = f.act(act, out_channels) if final_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_b(self.conv_a(x)) + self.shortcut(x))


class BottleneckUnit(nn.Module):
    """1×1 reduce → k×k (strided) → 1×1 expand, plus shortcut, then activation.

    ``mid_channels`` defaults to ``out_channels // 4``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int | tuple[int, ...] = 1,
        kernel_size: int | tuple[int, ...] = 3,
        *,
        mid_channels: int | None = None,
        norm: LayerSpec = "instance",
        act: LayerSpec = "relu",
        order: str = "cna",
        shortcut: str = "auto",
        final_act: bool = True,
        groups: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        mid = mid_channels or max(out_channels // 4, 1)
        kw = dict(norm=norm, order=order)
        self.reduce = ConvNormAct(spatial_dims, in_channels, mid, 1, act=act, **kw)
        self.conv = ConvNormAct(spatial_dims, mid, mid, kernel_size, stride, act=act, groups=groups,
                                dilation=dilation, **kw)
        self.expand = ConvNormAct(spatial_dims, mid, out_channels, 1, act=None, **kw)
        self.shortcut = _make_shortcut(spatial_dims, in_channels, out_channels, stride, shortcut, norm, order)
        self.act = f.act(act, out_channels) if final_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.expand(self.conv(self.reduce(x))) + self.shortcut(x))


def _make_shortcut(spatial_dims, in_channels, out_channels, stride, mode, norm, order) -> nn.Module:
    if mode not in ("auto", "conv", "identity"):
        raise ValueError(f"shortcut must be auto, conv or identity, got {mode!r}")
    strided = any(s != 1 for s in ((stride,) if isinstance(stride, int) else stride))
    if mode == "conv" or (mode == "auto" and (in_channels != out_channels or strided)):
        return ConvNormAct(spatial_dims, in_channels, out_channels, 1, stride, act=None, norm=norm, order=order)
    if in_channels != out_channels or strided:
        raise ValueError("identity shortcut needs equal widths and stride 1")
    return nn.Identity()


class Upsample(nn.Module):
    """Upsample by ``scale_factor``: ``mode="interp"`` (linear/nearest interpolation, then an
    optional 1×1 conv when ``out_channels`` differs) or ``mode="deconv"`` (transposed conv
    with kernel ``kernel_size``; kernel 3 uses padding 1 and ``output_padding = s - 1``)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int | None = None,
        scale_factor: int | tuple[int, ...] = 2,
        mode: str = "interp",
        interp: str = "linear",
        kernel_size: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.spatial_dims, self.interp = spatial_dims, interp
        sf = (scale_factor,) * spatial_dims if isinstance(scale_factor, int) else tuple(scale_factor)
        self.scale_factor = tuple(float(s) for s in sf)
        if mode == "deconv":
            k = kernel_size or max(sf)
            pad = (k - 1) // 2 if k > max(sf) else 0
            out_pad = tuple(s + 2 * pad - k for s in sf)
            self.op: nn.Module = f.conv_transpose(spatial_dims, in_channels, out_channels, k, sf, pad,
                                                  out_pad if len(set(out_pad)) > 1 else out_pad[0], bias=bias)
            self.proj: nn.Module = nn.Identity()
        elif mode == "interp":
            self.op = nn.Identity()
            self.proj = (nn.Identity() if out_channels == in_channels
                         else f.conv(spatial_dims, in_channels, out_channels, 1, bias=bias))
        else:
            raise ValueError(f"upsample mode must be 'interp' or 'deconv', got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor, size: list[int] | None = None) -> torch.Tensor:
        """``size`` (optional) forces the output grid, absorbing odd sizes."""
        if self.mode == "deconv":
            y = self.op(x)
            return f.resize(y, size) if size is not None else y
        if size is None:
            size = [int(s * k) for s, k in zip(x.shape[2:], self.scale_factor)]
        return self.proj(f.resize(x, size, self.interp))
