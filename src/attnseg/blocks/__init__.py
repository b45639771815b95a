"""Dimension-agnostic building blocks: layer factories, conv units, residual units,
upsampling (the attention plug-in is :mod:`attnseg.attention.plugin`)."""

from attnseg.blocks.factories import (
    act,
    check_spatial_dims,
    conv,
    conv_transpose,
    dropout,
    interp_mode,
    norm,
    pool,
    resize,
    same_padding,
    split_spec,
)
from attnseg.blocks.units import BottleneckUnit, ConvNormAct, ResidualUnit, Upsample
from attnseg.blocks.utils import check_divisible, pad_to_multiple

__all__ = [
    "BottleneckUnit",
    "ConvNormAct",
    "ResidualUnit",
    "Upsample",
    "act",
    "check_divisible",
    "check_spatial_dims",
    "conv",
    "conv_transpose",
    "dropout",
    "interp_mode",
    "norm",
    "pad_to_multiple",
    "pool",
    "resize",
    "same_padding",
    "split_spec",
]
