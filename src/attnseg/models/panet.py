"""The Prior Attention Network (PANet) family, in 2D and 3D.

Five registered architectures share one residual encoder–decoder (:class:`PANetUNet`):

* ``unet-res`` – residual U-Net (5 levels, concatenation skips);
* ``enhanced-unet`` – the same with deep-supervision heads on decoder levels 1–3;
* ``attention-unet-res`` – additive attention gates on every skip;
* ``prior-attention-net`` (alias ``panet``) – a prior head (``fcn`` or ``parallel``) predicts a
  1-channel whole-lesion map from the three deepest levels; its sigmoid gates every skip as
  ``(gamma_i + p_i) * skip_i`` (one learnable ``gamma`` per level) and it is returned as ``stage1``;
* ``cascaded-unet`` (:class:`PANetCascade`) – a 1-class U-Net whose thresholded output doubles the
  input intensities inside the region of interest before a second U-Net segments it.

``panet-brats`` is the preset of the reference BraTS 2020 configuration (the registry defaults
of every model above are that configuration too).

Outputs: in training mode ``forward`` returns a dict (``out`` plus ``level1..3``/``stage1`` where
the model has them; all logits at the input size); in eval mode it returns the ``out`` tensor
only and skips the work of the auxiliary outputs. ``forward(x, return_dict=True)`` (or
:meth:`forward_dict`) gives the dict in any mode; :meth:`predict` is the tensor-only path.

``reference_layout=True`` keeps the parameters the reference implementation constructs but never
uses (the PReLU slope of every convolution unit without activation and, for blocks whose width
and stride do not change, the unused 1×1 shortcut), so that parameter counts and state dicts match
the reference one to one; they are named ``unused_prelu`` / ``unused_shortcut`` and never receive
a gradient. ``reference_layout=False`` drops them (the clean layout).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import nn

from attnseg.attention.plugin import AttentionPlugin
from attnseg.blocks import (
    BottleneckUnit,
    ConvNormAct,
    ResidualUnit,
    Upsample,
    check_divisible,
    check_spatial_dims,
    conv,
    pad_to_multiple,
    resize,
    split_spec,
)
from attnseg.blocks.factories import LayerSpec
from attnseg.blocks.factories import act as make_act
from attnseg.models import register_model

NUM_LEVELS = 5
BRATS_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 320)
BRATS_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 2)
#: The reference BraTS 2020 configuration (configs/adam.cfg of the reference code).
BRATS_CONFIG: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 4,
    "features": BRATS_CHANNELS,
    "strides": BRATS_STRIDES,
    "norm": "instance",
    "act": "prelu",
    "use_deconv": False,
    "reference_layout": True,
}
PRIOR_HEADS = ("fcn", "parallel")
#: names of the first PANet release -> the library's common names (accepted, with a DeprecationWarning)
DEPRECATED_NAMES = {"num_classes": "out_channels", "channels": "features", "img_size": "input_size"}


def _resolve_alias(new_name: str, new: Any, old_name: str, old: Any, default: Any) -> Any:
    """The value of ``new_name``, taking a deprecated ``old_name`` when given (it wins over a
    registry default of the new name, so reference configs keep working)."""
    if old is None:
        return default if new is None else new
    warnings.warn(f"PANet argument {old_name!r} is deprecated; use {new_name!r}", DeprecationWarning, stacklevel=3)
    return old


# ----------------------------------------------------------------------------------------------
# small wiring helpers


def _add_unused_prelu(unit: nn.Module, act: LayerSpec) -> None:
    """Give a no-activation unit the PReLU slope the reference constructs for it but never uses.

    The slope is registered as a parameter of the unit (not a child module), so the unit's
    ``forward`` is unchanged."""
    if split_spec(act)[0] == "prelu":
        unit.register_parameter("unused_prelu", make_act(act).weight)


def res_unit(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, *, norm: LayerSpec,
             act: LayerSpec, bottleneck: bool = False, reference_layout: bool = True) -> nn.Module:
    """The reference's residual unit (basic or bottleneck) from :mod:`attnseg.blocks` units.

    The bottleneck's middle width is ``in_channels // 4`` as in the reference.
    """
    if bottleneck:
        unit: nn.Module = BottleneckUnit(spatial_dims, in_channels, out_channels, stride, norm=norm, act=act,
                                         mid_channels=max(in_channels // 4, 1))
        no_act = [unit.expand]
    else:
        unit = ResidualUnit(spatial_dims, in_channels, out_channels, stride, norm=norm, act=act)
        no_act = [unit.conv_b]
    if reference_layout:
        if isinstance(unit.shortcut, nn.Identity):
            # the reference always builds the 1x1 projection, even when it is not applied
            unit.unused_shortcut = ConvNormAct(spatial_dims, in_channels, out_channels, 1, stride, norm=norm,
                                               act=None)
            no_act.append(unit.unused_shortcut)
        else:
            no_act.append(unit.shortcut)
        for m in no_act:
            _add_unused_prelu(m, act)
    return unit


def _cn(spatial_dims: int, cin: int, cout: int, k: int, stride: int = 1, *, norm: LayerSpec, act: LayerSpec,
        with_act: bool = True, reference_layout: bool = True) -> ConvNormAct:
    """conv (no bias) → norm → optional activation, as the reference's ``ConvNorm``."""
    unit = ConvNormAct(spatial_dims, cin, cout, k, stride, norm=norm, act=act if with_act else None, bias=False)
    if not with_act and reference_layout:
        _add_unused_prelu(unit, act)
    return unit


class AdditiveGate(nn.Module):
    """Additive attention gate on a skip ``x`` driven by the coarser tensor ``g``.

    ``q = relu(W_g g + W_x x)`` on g's grid (``W_x`` strides x down by ``factor``),
    ``psi = sigmoid(W_psi q)`` (1 channel), resized to x's grid, output ``x * psi``.
    Shapes: x ``(B, F_l, *S)``, g ``(B, F_g, *S/factor)`` → ``(B, F_l, *S)``.
    """

    def __init__(self, spatial_dims: int, gate_channels: int, skip_channels: int, inter_channels: int,
                 factor: int = 2, *, norm: LayerSpec = "batch", act: LayerSpec = "prelu",
                 reference_layout: bool = True) -> None:
        super().__init__()
        kw = dict(norm=norm, act=act, with_act=False, reference_layout=reference_layout)
        self.w_g = _cn(spatial_dims, gate_channels, inter_channels, 1, 1, **kw)
        self.w_x = _cn(spatial_dims, skip_channels, inter_channels, 1, factor, **kw)
        self.psi = _cn(spatial_dims, inter_channels, 1, 1, 1, **kw)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        q = torch.relu_(self.w_g(g) + self.w_x(x))  # fresh tensor: in place is safe
        psi = torch.sigmoid(self.psi(q))
        return x * resize(psi, x.shape[2:])


class FCNPriorHead(nn.Module):
    """FCN-style prior head: x4 → x3 grid, refine, → x2 grid, refine, 1×1 conv to 1 logit map.

    Inputs ``x2 (C2, S2)``, ``x3 (C3, S3)``, ``x4 (C4, S4)``; output ``(B, 1, *S2)``.
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], *, norm: LayerSpec, act: LayerSpec) -> None:
        super().__init__()
        c2, c3, c4 = channels
        kw = dict(norm=norm, act=act)
        self.proj4 = _cn(spatial_dims, c4, c3, 1, **kw)
        self.fuse3 = _cn(spatial_dims, c3, c3, 3, **kw)
        self.proj3 = _cn(spatial_dims, c3, c2, 1, **kw)
        self.fuse2 = _cn(spatial_dims, c2, c2, 3, **kw)
        self.out = conv(spatial_dims, c2, 1, 1)

    def forward(self, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        r3 = self.fuse3(self.proj4(resize(x4, x3.shape[2:])) + x3)
        r2 = self.fuse2(self.proj3(resize(r3, x2.shape[2:])) + x2)
        return self.out(r2)


class ParallelPriorHead(nn.Module):
    """Parallel-decoder prior head: the three levels are resized to the x2 grid, projected to
    ``m = C2 // 2`` channels, fused pairwise from the deepest, and a 1×1 conv on
    ``cat[l2, l3, f4]`` gives the 1-channel logits ``(B, 1, *S2)``."""

    def __init__(self, spatial_dims: int, channels: Sequence[int], *, norm: LayerSpec, act: LayerSpec) -> None:
        super().__init__()
        c2, c3, c4 = channels
        m = c2 // 2
        kw = dict(norm=norm, act=act)
        self.proj2 = _cn(spatial_dims, c2, m, 1, **kw)
        self.proj3 = _cn(spatial_dims, c3, m, 1, **kw)
        self.proj4 = _cn(spatial_dims, c4, m, 1, **kw)
        self.fuse3 = _cn(spatial_dims, 2 * m, m, 3, **kw)
        self.fuse2 = _cn(spatial_dims, 2 * m, m, 3, **kw)
        self.out = conv(spatial_dims, 3 * m, 1, 1)

    def forward(self, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        size = x2.shape[2:]
        f2 = self.proj2(x2)
        f3 = self.proj3(resize(x3, size))
        f4 = self.proj4(resize(x4, size))
        l3 = self.fuse3(torch.cat([f3, f4], 1))
        l2 = self.fuse2(torch.cat([f2, l3], 1))
        return self.out(torch.cat([l2, l3, f4], 1))


class PriorGate(nn.Module):
    """Parameterised skip: ``(gamma + attention) * x`` with one learnable scalar ``gamma`` (init 1);
    the 1-channel attention map broadcasts over the channels of ``x``."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return (self.scale + attention) * x


# ----------------------------------------------------------------------------------------------
# models


class _PANetBase(nn.Module):
    """Output conventions shared by the family (see the module docstring)."""

    #: keys of the training-mode output dict
    output_keys: tuple[str, ...] = ("out",)

    def _run(self, x: torch.Tensor, full: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_dict: Optional[bool] = None):  # noqa: ANN201 (dict or tensor)
        """``x (B, in_channels, *S)`` → dict of logits (training mode or ``return_dict=True``) or the
        ``out`` logits ``(B, num_classes, *S)`` (eval mode or ``return_dict=False``)."""
        full = self.training if return_dict is None else return_dict
        outs = self._run(x, full)
        return outs if full else outs["out"]

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output (``output_keys``) in any mode."""
        return self._run(x, True)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Inference path without gradients: the ``out`` logits only, no auxiliary outputs computed
        (call the model in eval mode instead when gradients are needed, e.g. for saliency maps)."""
        return self._run(x, False)["out"]


class PANetUNet(_PANetBase):
    """Five-level residual U-Net of the PANet family with optional additive gates, deep
    supervision and prior attention.

    The first three arguments are the library's model contract: ``spatial_dims, in_channels,
    out_channels`` (stored on the model). ``num_classes``, ``channels`` and ``img_size`` (the
    first release's names of ``out_channels``, ``features`` and ``input_size``) are accepted as
    deprecated aliases, so reference configs and older checkpoints keep working.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (4 BraTS modalities).
        out_channels: output channels (logits).
        features: widths of the 5 levels.
        strides: stride of each level's first unit (right-padded with 1 to 5 entries, as the
            reference); the input must be divisible by their product (or use ``pad_input``).
        norm, act: backbone/decoder normalisation and activation (``"prelu"`` = shared slope).
        use_deconv: transposed-conv upsampling (k3) instead of linear interpolation.
        block: ``"basic"`` (two 3×3 convs), ``"bottleneck"`` or ``"auto"`` (the reference rule:
            bottleneck when ``channels[-1] > 320``).
        deep_supervision: 1×1 heads on decoder levels 3, 2, 1 (``level3..1`` outputs).
        gate: additive attention gates on the skips (attention-unet-res).
        prior_head: ``None``, ``"fcn"`` or ``"parallel"`` (prior-attention-net).
        head_norm, head_act: norm/activation of the prior head and gates; ``None`` follows
            ``norm``/``act``, except that the reference layout uses batch norm + PReLU there
            (the reference builds them without the model's settings).
        reference_layout: keep never-used reference parameters (see module docstring).
        pad_input: zero-pad inputs to a multiple of the total stride and crop outputs back;
            otherwise such inputs raise ``ValueError``.
        attention, attention_kwargs, attention_at: attention plug-in (:class:`AttentionPlugin`)
            at ``encoder`` (levels 0–3), ``bottleneck`` (level 4), ``decoder`` (levels 3–0) and
            ``skip`` sites (gates get the coarser decoder tensor as ``g``).
        input_size: input spatial size, only needed by size-bound attention modules.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int | None = None,
        features: Sequence[int] | None = None,
        strides: Sequence[int] = BRATS_STRIDES,
        norm: LayerSpec = "instance",
        act: LayerSpec = "prelu",
        use_deconv: bool = False,
        block: str = "auto",
        deep_supervision: bool = False,
        gate: bool = False,
        prior_head: str | None = None,
        head_norm: LayerSpec = None,
        head_act: LayerSpec = None,
        reference_layout: bool = True,
        pad_input: bool = False,
        attention: str | Sequence[str] | None = None,
        attention_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        attention_at: str | Sequence[str] = ("encoder", "decoder"),
        input_size: Sequence[int] | None = None,
        *,
        num_classes: int | None = None,
        channels: Sequence[int] | None = None,
        img_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        num_classes = _resolve_alias("out_channels", out_channels, "num_classes", num_classes, 4)
        channels = _resolve_alias("features", features, "channels", channels, BRATS_CHANNELS)
        img_size = _resolve_alias("input_size", input_size, "img_size", img_size, None)
        d = check_spatial_dims(spatial_dims)
        channels = tuple(int(c) for c in channels)
        strides = tuple(int(s) for s in strides)
        if len(channels) != NUM_LEVELS or min(channels) < 1:
            raise ValueError(f"channels must be {NUM_LEVELS} positive widths, got {channels}")
        if len(strides) > NUM_LEVELS or any(s < 1 for s in strides):
            raise ValueError(f"strides must be at most {NUM_LEVELS} positive integers, got {strides}")
        strides = strides + (1,) * (NUM_LEVELS - len(strides))
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if block not in ("auto", "basic", "bottleneck"):
            raise ValueError(f"block must be auto, basic or bottleneck, got {block!r}")
        if prior_head is not None and prior_head not in PRIOR_HEADS:
            raise ValueError(f"prior head must be one of {PRIOR_HEADS} or None, got {prior_head!r}")
        bottleneck = block == "bottleneck" or (block == "auto" and channels[-1] > 320)
        if head_norm is None:
            head_norm = "batch" if reference_layout else norm
        if head_act is None:
            head_act = "prelu" if reference_layout else act
        self.spatial_dims, self.in_channels, self.out_channels = d, int(in_channels), int(num_classes)
        self.num_classes = self.out_channels  # the first release's name, kept for existing code
        self.channels = self.features = channels
        self.strides = strides
        self.total_stride = math.prod(strides)
        self.deep_supervision, self.gated, self.prior_head_type = bool(deep_supervision), bool(gate), prior_head
        self.pad_input, self.bottleneck = bool(pad_input), bottleneck
        unit_kw = dict(norm=norm, act=act, bottleneck=bottleneck, reference_layout=reference_layout)

        # encoder: level i maps channels[i-1] → channels[i] with stride strides[i]
        widths_in = (int(in_channels),) + channels[:-1]
        self.encoder = nn.ModuleList(res_unit(d, ci, co, s, **unit_kw)
                                     for ci, co, s in zip(widths_in, channels, strides))
        # decoder level i (3..0): cat[skip_i, up(y_{i+1})] → channels[i]; index = level
        self.decoder = nn.ModuleList(res_unit(d, channels[i] + channels[i + 1], channels[i], 1, **unit_kw)
                                     for i in range(NUM_LEVELS - 1))
        # up[i] brings level i+1 to level i (factor strides[i+1])
        self.up = nn.ModuleList(
            Upsample(d, channels[i + 1], scale_factor=strides[i + 1], mode="deconv", kernel_size=3)
            if use_deconv else Upsample(d, channels[i + 1], scale_factor=strides[i + 1])
            for i in range(NUM_LEVELS - 1))
        self.head_out = conv(d, channels[0], num_classes, 1)
        self.ds = nn.ModuleDict({f"level{i}": conv(d, channels[i], num_classes, 1) for i in (3, 2, 1)}
                                if deep_supervision else {})
        self.gates = nn.ModuleList(
            AdditiveGate(d, channels[i + 1], channels[i], channels[i], strides[i + 1], norm=head_norm,
                         act=head_act, reference_layout=reference_layout)
            for i in range(NUM_LEVELS - 1)) if gate else nn.ModuleList()
        if prior_head is not None:
            head_cls = FCNPriorHead if prior_head == "fcn" else ParallelPriorHead
            self.prior_head = head_cls(d, channels[2:], norm=head_norm, act=head_act)
            # the level-3 prior map is learnt from the level-2 one (k3, stride 2, no padding)
            self.prior_down = conv(d, 1, 1, 3, 2, padding=0)
            self.prior_gates = nn.ModuleList(PriorGate() for _ in range(NUM_LEVELS - 1))
        keys = ["out"]
        if prior_head is not None:
            keys.append("stage1")
        if deep_supervision:
            keys += ["level3", "level2", "level1"]
        self.output_keys = tuple(keys)

        # attention plug-in sites (identity, without parameters, where not requested)
        plugin = AttentionPlugin(attention, attention_kwargs, attention_at)
        self.attention_name = plugin.name
        grids = self._grids(img_size)
        self.attn_encoder = nn.ModuleList(plugin.build("encoder", channels[i], d, spatial_size=grids[i])
                                          for i in range(NUM_LEVELS - 1))
        self.attn_bottleneck = plugin.build("bottleneck", channels[-1], d, spatial_size=grids[-1])
        self.attn_skip = nn.ModuleList(plugin.build("skip", channels[i], d, gate_channels=channels[i + 1],
                                                    spatial_size=grids[i]) for i in range(NUM_LEVELS - 1))
        self.attn_decoder = nn.ModuleList(plugin.build("decoder", channels[i], d, spatial_size=grids[i])
                                          for i in range(NUM_LEVELS - 1))

    def _grids(self, img_size: Sequence[int] | None) -> list[tuple[int, ...] | None]:
        if img_size is None:
            return [None] * NUM_LEVELS
        size = (int(img_size),) * self.spatial_dims if isinstance(img_size, int) else tuple(img_size)
        grids, f = [], 1
        for s in self.strides:
            f *= s
            grids.append(tuple(-(-n // f) for n in size))
        return grids

    # -- forward pieces --------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected input (B, {self.in_channels}, "
                             f"{', '.join('S' * self.spatial_dims)}), got {tuple(x.shape)}")
        if not self.pad_input:
            check_divisible(tuple(x.shape[2:]), self.total_stride, type(self).__name__)
        if self.prior_head_type is not None:
            f2 = self.strides[0] * self.strides[1] * self.strides[2]
            small = [s for s in x.shape[2:] if -(-s // f2) < 3]
            if small:
                raise ValueError(f"{type(self).__name__}: input {tuple(x.shape[2:])} is too small for the prior "
                                 f"attention (the level-2 grid needs at least 3 voxels per axis, i.e. inputs "
                                 f">= {3 * f2})")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features ``x0..x4`` (level i at ``1/prod(strides[:i+1])`` of the input)."""
        feats = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            x = self.attn_encoder[i](x) if i < NUM_LEVELS - 1 else self.attn_bottleneck(x)
            feats.append(x)
        return feats

    def _run(self, x: torch.Tensor, full: bool) -> dict[str, torch.Tensor]:
        self._check_input(x)
        crop = None
        if self.pad_input:
            x, crop = pad_to_multiple(x, self.total_stride)
        size = x.shape[2:]
        feats = self.encode(x)
        outs: dict[str, torch.Tensor] = {}

        atts: list[Optional[torch.Tensor]] = [None] * (NUM_LEVELS - 1)
        if self.prior_head_type is not None:
            prior = self.prior_head(feats[2], feats[3], feats[4])  # logits on the level-2 grid
            p = torch.sigmoid(prior)
            atts = [resize(p, feats[i].shape[2:]) for i in range(3)]
            atts.append(resize(self.prior_down(p), feats[3].shape[2:]))
            if full:
                outs["stage1"] = resize(prior, size)

        y = feats[-1]
        ys: list[Optional[torch.Tensor]] = [None] * (NUM_LEVELS - 1)
        for i in range(NUM_LEVELS - 2, -1, -1):  # levels 3, 2, 1, 0
            skip = feats[i]
            att = atts[i]
            if att is not None:
                skip = self.prior_gates[i](skip, att)
            if self.gated:
                skip = self.gates[i](skip, y)
            skip = self.attn_skip[i](skip, y)
            up = self.up[i](y, size=list(skip.shape[2:]))
            y = self.attn_decoder[i](self.decoder[i](torch.cat([skip, up], 1)))
            ys[i] = y

        if full and self.deep_supervision:
            for i in (3, 2, 1):
                head = self.ds[f"level{i}"](ys[i])  # at its own grid with ds_native_size (see unet.py)
                outs[f"level{i}"] = head if getattr(self, "ds_native_size", False) else resize(head, size)
        outs["out"] = resize(self.head_out(y), size)
        if crop is not None:
            outs = {k: v[crop] for k, v in outs.items()}
        return outs

    # -- reference checkpoint names ----------------------------------------------------------

    def reference_key(self, key: str) -> str | None:
        """Reference state-dict name of one of this model's state-dict keys (``None`` for the
        attention plug-in sites, which the reference does not have)."""
        return _reference_key(key, self.prior_head_type, self.bottleneck)


class PANetCascade(_PANetBase):
    """Two-stage cascade: ``stage1`` = 1-class U-Net logits; ``mask = sigmoid(stage1) > 0.5``
    (hard, no gradient); stage 2 segments ``x * (1 + mask)`` (intensities doubled in the ROI).
    Both stages take the :class:`PANetUNet` arguments; ``deep_supervision`` applies to stage 2."""

    output_keys = ("out", "stage1")

    def __init__(self, spatial_dims: int = 3, in_channels: int = 4, out_channels: int | None = None,
                 deep_supervision: bool = False, *, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        out_channels = _resolve_alias("out_channels", out_channels, "num_classes", num_classes, 4)
        self.stage1 = PANetUNet(spatial_dims, in_channels, 1, **kwargs)
        self.stage2 = PANetUNet(spatial_dims, in_channels, out_channels, deep_supervision=deep_supervision, **kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_classes = out_channels  # the first release's name, kept for existing code
        self.spatial_dims = self.stage1.spatial_dims
        self.output_keys = ("out", "stage1") + tuple(k for k in self.stage2.output_keys if k != "out")

    def _run(self, x: torch.Tensor, full: bool) -> dict[str, torch.Tensor]:
        roi = self.stage1._run(x, False)["out"]
        # the reference's sigmoid form, not roi > 0: they differ where sigmoid rounds to 0.5
        mask = (torch.sigmoid(roi) > 0.5).to(x.dtype)
        outs = self.stage2._run(x * (1 + mask), full)
        if full:
            outs["stage1"] = roi
        return outs

    def reference_key(self, key: str) -> str | None:
        stage, _, rest = key.partition(".")
        inner = getattr(self, stage).reference_key(rest)
        return None if inner is None else {"stage1": "first_stage.", "stage2": "second_stage."}[stage] + inner


# ----------------------------------------------------------------------------------------------
# attnseg name → reference name

_UNIT_NAMES = {"conv_a": "conv1", "conv_b": "conv2", "shortcut": "identity_mapping",
               "unused_shortcut": "identity_mapping", "act": "act"}
_BOTTLENECK_NAMES = {"reduce": "conv1", "conv": "conv2", "expand": "conv3", "shortcut": "identity_mapping",
                     "unused_shortcut": "identity_mapping", "act": "act"}
_HEAD_NAMES = {
    "fcn": {"proj4": "conv5_4", "fuse3": "conv4_0", "proj3": "conv4_3", "fuse2": "conv3_0", "out": "conv_out"},
    "parallel": {"proj2": "conv3_0", "proj3": "conv4_0", "proj4": "conv5_0", "fuse3": "conv4_5",
                 "fuse2": "conv3_4", "out": "conv_out"},
}
_GATE_NAMES = {"w_g": "W_g", "w_x": "W_x", "psi": "psi.0"}


def _convnorm_key(rest: str) -> str:
    return "act.weight" if rest == "unused_prelu" else rest


def _unit_key(rest: str, bottleneck: bool) -> str:
    first, _, tail = rest.partition(".")
    names = _BOTTLENECK_NAMES if bottleneck else _UNIT_NAMES
    if first == "act":  # the unit's own activation after the sum
        return rest
    return f"{names[first]}.{_convnorm_key(tail)}"


def _reference_key(key: str, head: str | None, bottleneck: bool) -> str | None:
    m = re.fullmatch(r"encoder\.(\d)\.(.+)", key)
    if m:
        return f"backbone.conv{m[1]}_0.{_unit_key(m[2], bottleneck)}"
    m = re.fullmatch(r"decoder\.(\d)\.(.+)", key)
    if m:
        i = int(m[1])
        return f"conv{i}_{NUM_LEVELS - 1 - i}.{_unit_key(m[2], bottleneck)}"
    m = re.fullmatch(r"up\.(\d)\.op\.(.+)", key)
    if m:
        i = int(m[1])
        return f"up{i + 1}_{i}.trans_conv.{m[2]}"
    m = re.fullmatch(r"head_out\.(.+)", key)
    if m:
        return f"convds0.{m[1]}"
    m = re.fullmatch(r"ds\.level(\d)\.(.+)", key)
    if m:
        return f"convds{m[1]}.{m[2]}"
    m = re.fullmatch(r"gates\.(\d)\.(w_g|w_x|psi)\.(.+)", key)
    if m:
        i = int(m[1])
        return f"gate{i + 1}_{i}.{_GATE_NAMES[m[2]]}.{_convnorm_key(m[3])}"
    m = re.fullmatch(r"prior_head\.(\w+)\.(.+)", key)
    if m and head is not None:
        return f"one_stage.{_HEAD_NAMES[head][m[1]]}.{_convnorm_key(m[2])}"
    m = re.fullmatch(r"prior_down\.(.+)", key)
    if m:
        return f"conv_down.{m[1]}"
    m = re.fullmatch(r"prior_gates\.(\d)\.scale", key)
    if m:
        return f"skip_{m[1]}.param"
    if key.startswith("attn_"):
        return None
    raise KeyError(f"no reference name for parameter {key!r}")


# ----------------------------------------------------------------------------------------------
# registry

_DESC = "(PANet family; defaults = reference BraTS 2020 configuration)"
# tags read by registry-driven tests (tiny widths, a size every model of the family accepts; the
# default strides (1, 2, 2, 2, 2) need multiples of 16)
_TEST_TAGS: dict[str, Any] = {"test_kwargs": {"features": (4, 8, 8, 16, 16)}, "test_input": (1, 4, 32, 32, 32),
                              "divisor": 16}
_LEVELS = ("level1", "level2", "level3")  # deep supervision outputs


@register_model("unet-res", family="panet", **_TEST_TAGS, defaults=dict(BRATS_CONFIG),
                description=f"Residual 5-level U-Net {_DESC}")
def unet_res(**kwargs: Any) -> PANetUNet:
    return PANetUNet(**kwargs)


@register_model("enhanced-unet", family="panet", **_TEST_TAGS, aux_outputs=_LEVELS,
                defaults=dict(BRATS_CONFIG, deep_supervision=True),
                description=f"Residual U-Net with deep supervision on levels 1-3 {_DESC}")
def enhanced_unet(**kwargs: Any) -> PANetUNet:
    return PANetUNet(**kwargs)


@register_model("attention-unet-res", family="panet", **_TEST_TAGS, defaults=dict(BRATS_CONFIG, gate=True),
                description=f"Residual U-Net with additive attention gates on the skips {_DESC}")
def attention_unet_res(**kwargs: Any) -> PANetUNet:
    return PANetUNet(**kwargs)


@register_model("cascaded-unet", family="panet", **_TEST_TAGS, aux_outputs=("stage1",), defaults=dict(BRATS_CONFIG),
                description=f"Two residual U-Nets: whole-lesion ROI, then multi-class {_DESC}")
def cascaded_unet(**kwargs: Any) -> PANetCascade:
    return PANetCascade(**kwargs)


@register_model("prior-attention-net", family="panet", **_TEST_TAGS, aux_outputs=("stage1", *_LEVELS),
                aliases=("panet",),
                defaults=dict(BRATS_CONFIG, head="fcn", deep_supervision=True),
                description=f"Prior Attention Network: prior head (fcn|parallel) gates the skips {_DESC}")
def prior_attention_net(head: str = "fcn", deep_supervision: bool = True, **kwargs: Any) -> PANetUNet:
    return PANetUNet(prior_head=head, deep_supervision=deep_supervision, **kwargs)


@register_model("panet-brats", family="panet", **_TEST_TAGS, aux_outputs=("stage1", *_LEVELS),
                defaults=dict(BRATS_CONFIG, head="fcn", deep_supervision=True),
                description="Preset: PANet exactly as the reference BraTS 2020 configuration (fcn head, "
                            "BN head, reference layout)")
def panet_brats(head: str = "fcn", deep_supervision: bool = True, **kwargs: Any) -> PANetUNet:
    return PANetUNet(prior_head=head, deep_supervision=deep_supervision, **kwargs)
