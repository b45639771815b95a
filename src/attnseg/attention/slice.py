"""Slice attention, key-slice selection, key-slice channel attention and their composition,
the Progressive Attention Module (PAM) of AttentionBased-MIS.

Terminology. A *slice* is one index along the **slice axis**, given as ``slice_axis`` = an
index into the spatial dims: for 3D inputs ``(B, C, D, H, W)`` the default ``0`` is ``D``
(tensor dim 2); ``1`` is ``H``, ``2`` is ``W``. For 2D inputs ``(B, C, H, W)`` the default
``0`` is ``H``, so the slices are image rows (``1`` = columns). The per-slice descriptor
``z`` of shape ``(B, C, D)`` pools every other spatial axis.

* ``slice`` (:class:`SliceAttention`): ``s = sigmoid(E(z))`` in ``(0, 1)^D`` per sample and
  channel, output ``x · s`` broadcast over the slice. ``form="fixed"``: ``E`` is the
  reference's per-channel fully connected layer pair over the ``D`` slices (weights shaped
  ``(C, D//r, D)`` and ``(C, D, D//r)``, run as one batched ``einsum``, never a loop over
  channels), so the module is bound to one slice count. ``form="adaptive"``: ``E`` is a
  per-channel (depthwise) 1D convolution pair along the slice axis and accepts any depth.
* ``kss`` (:class:`KeySliceSelection`): ``p = softmax(s)`` over the slices; slice ``j`` is a
  key slice when ``p_j ≥ mean(p) = 1/D``. Boolean mask, no gradient.
* ``ksca`` (:class:`KeySliceChannelAttention`): channel SE whose descriptor for channel
  ``c`` is the mean of that channel over its key slices only; FC ``C → C//min(r, C) → C``,
  sigmoid, ``x · t``.
* ``pam`` (:class:`ProgressiveAttention`): ``slice`` (reference "ag" flavour) → ``kss`` →
  ``ksca`` on the slice-attended tensor, applied as a single multiply
  ``x · (s ⊗ t)``: the key-slice mean of ``x · s`` equals ``Σ_key s_j z_j / #key`` so the
  attended tensor is never materialised.

Every module here is one path of plain autograd; the per-slice pooling and rescaling are the
speed-up layer's :func:`~attnseg.attention._accel.slice_stats` /
:func:`~attnseg.attention._accel.scale_slices` (views of ``x``'s own layout, no copies).

Reference parity (``seed-models.md`` §5.2–§5.3): ``clamp_reduction=True`` uses
``r = min(reduction, D)`` (scSE flavour); ``False`` uses ``r = reduction`` as the PAM
flavour does, so ``D // r`` may be 0, giving a zero-width hidden layer whose output is just
the second bias (input-independent slice weights), reproduced exactly. ``reference_quirks``
reproduces pooling bugs: in ``slice`` the ``max`` pool becomes an average (scSE flavour);
in ``ksca`` ``max`` becomes the key-slice mean. Reference state dicts convert with
:func:`load_reference_slice_weights` / :func:`load_reference_channel_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attnseg.attention import register_attention
from attnseg.attention._accel import scale_slices, slice_stats
from attnseg.blocks import check_spatial_dims

POOLINGS = ("avg", "max", "avg+max")


def _check_pooling(pooling: str, what: str = "pooling") -> str:
    pooling = {"avg_and_max": "avg+max", "max+avg": "avg+max"}.get(pooling, pooling)
    if pooling not in POOLINGS:
        raise ValueError(f"{what} must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def _check_axis(slice_axis: int, spatial_dims: int) -> int:
    if not 0 <= int(slice_axis) < spatial_dims:
        raise ValueError(f"slice_axis must index a spatial dim (0..{spatial_dims - 1}), got {slice_axis}")
    return int(slice_axis)


def key_slice_mask(slice_weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Key slices of ``slice_weights`` (e.g. ``(B, C, D)``) along ``dim``: ``softmax ≥ its mean``.

    Computed without gradient (a hard selection), per sample and channel. At least one
    slice is always selected: the largest probability is (when all are equal, the rounded
    mean can exceed every one of them, which left no key slice and a 0/0 descriptor).
    """
    with torch.no_grad():
        p = torch.softmax(slice_weights.detach(), dim=dim)
        return (p >= p.mean(dim=dim, keepdim=True)) | (p == p.amax(dim=dim, keepdim=True))


class SliceAttention(nn.Module):
    """Slice squeeze-and-excitation along ``slice_axis`` (see the module docstring).

    Args:
        channels: ``C``.
        spatial_dims: 2 or 3.
        form: ``"fixed"`` (per-channel FC over a known slice count) or ``"adaptive"``
            (depthwise 1D convolutions along the slice axis; any depth).
        spatial_size: spatial size at the site; gives the slice count of the fixed form.
        num_slices: explicit slice count (overrides ``spatial_size``).
        slice_axis: index into the spatial dims (0 = D in 3D, rows in 2D).
        reduction: slice reduction ``h`` of the fixed form; hidden width ``D // r``.
        clamp_reduction: ``r = min(h, D)`` if True, else ``r = h`` (zero width allowed).
        pooling: ``avg``, ``max`` or ``avg+max`` (shared excitation, logits summed).
        kernel_size, hidden: adaptive form: 1D kernel and hidden maps per channel.
        reference_quirks: ``max`` pooling is an average pool (the scSE-flavour bug).

    Shape: ``(B, C, *spatial)`` → same. Parameters of the fixed form:
    ``C · (2·D·(D//r) + D//r + D)``, named ``fc1_weight (C, D//r, D)``, ``fc1_bias (C, D//r)``,
    ``fc2_weight (C, D, D//r)``, ``fc2_bias (C, D)``.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        form: str = "fixed",
        spatial_size: Sequence[int] | None = None,
        num_slices: int | None = None,
        slice_axis: int = 0,
        reduction: int = 16,
        clamp_reduction: bool = True,
        pooling: str = "avg",
        kernel_size: int = 5,
        hidden: int = 4,
        reference_quirks: bool = False,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.channels, self.spatial_dims = int(channels), spatial_dims
        self.slice_axis = _check_axis(slice_axis, spatial_dims)
        self.pooling = _check_pooling(pooling)
        self.reference_quirks = bool(reference_quirks)
        # the max branch needs its own statistics unless the quirk turns it into an average
        self.needs_max = self.pooling != "avg" and not self.reference_quirks
        if form not in ("fixed", "adaptive"):
            raise ValueError(f"form must be 'fixed' or 'adaptive', got {form!r}")
        self.form = form
        c = self.channels
        if form == "fixed":
            if num_slices is None and spatial_size is not None:
                if len(spatial_size) != spatial_dims:
                    raise ValueError(f"spatial_size {tuple(spatial_size)} does not have {spatial_dims} dims")
                num_slices = int(spatial_size[self.slice_axis])
            if num_slices is None:
                raise ValueError("fixed-form slice attention needs the slice count: pass num_slices=... or "
                                 "spatial_size=... (or use form='adaptive', which accepts any depth)")
            d = int(num_slices)
            if d < 1 or reduction < 1:
                raise ValueError(f"num_slices and reduction must be >= 1, got {d} and {reduction}")
            r = min(reduction, d) if clamp_reduction else reduction
            dh = d // r
            self.num_slices, self.hidden_slices = d, dh
            self.fc1_weight = nn.Parameter(torch.empty(c, dh, d))
            self.fc1_bias = nn.Parameter(torch.empty(c, dh))
            self.fc2_weight = nn.Parameter(torch.empty(c, d, dh))
            self.fc2_bias = nn.Parameter(torch.empty(c, d))
            self.reset_parameters()
        else:
            if kernel_size < 1 or kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
            self.num_slices = None
            self.conv1 = nn.Conv1d(c, c * hidden, kernel_size, padding=kernel_size // 2, groups=c)
            self.conv2 = nn.Conv1d(c * hidden, c, kernel_size, padding=kernel_size // 2, groups=c)

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default initialisation, channel by channel (fixed form)."""
        if self.form != "fixed":
            return
        for w, bias, fan_in in ((self.fc1_weight, self.fc1_bias, self.num_slices),
                                (self.fc2_weight, self.fc2_bias, self.hidden_slices)):
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            with torch.no_grad():
                w.uniform_(-bound, bound)  # = kaiming_uniform(a=sqrt(5)) of nn.Linear
                bias.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        size = f"num_slices={self.num_slices}, hidden={self.hidden_slices}, " if self.form == "fixed" else ""
        return f"{self.channels}, form={self.form!r}, {size}slice_axis={self.slice_axis}, pooling={self.pooling!r}"

    def _check_slices(self, z: torch.Tensor) -> None:
        if z.shape[-1] != self.num_slices:
            raise ValueError(f"fixed-form slice attention was built for {self.num_slices} slices along spatial "
                             f"axis {self.slice_axis} but got {z.shape[-1]}; rebuild it for this size or use "
                             f"form='adaptive'")

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        """Slice descriptors ``(B, C, D)`` → slice logits ``(B, C, D)``."""
        if self.form == "adaptive":
            return self.conv2(F.relu(self.conv1(z)))
        self._check_slices(z)
        if self.hidden_slices == 0:
            # zero-width hidden layer (reference PAM flavour with D < h): only the second bias remains
            return self.fc2_bias.unsqueeze(0).expand(z.shape[0], -1, -1)
        # one batched matrix product per layer over the channel dim (C, B, ·); fewer dispatched
        # ops than einsum, which matters because these tensors are tiny (~30% faster fwd+bwd)
        h = torch.baddbmm(self.fc1_bias.unsqueeze(1), z.transpose(0, 1), self.fc1_weight.transpose(1, 2)).relu_()
        out = torch.baddbmm(self.fc2_bias.unsqueeze(1), h, self.fc2_weight.transpose(1, 2))
        return out.transpose(0, 1).contiguous()

    def weights(self, zavg: torch.Tensor, zmax: torch.Tensor | None = None) -> torch.Tensor:
        """Sigmoid slice weights ``s`` ``(B, C, D)`` from per-slice mean (and max) descriptors."""
        if zmax is None or self.reference_quirks:
            zmax = zavg
        if self.pooling == "avg":
            logits = self.excite(zavg)
        elif self.pooling == "max":
            logits = self.excite(zmax)
        else:
            logits = self.excite(zavg) + self.excite(zmax)
        return torch.sigmoid(logits)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x · s, s)`` with ``s`` the slice weights ``(B, C, D)``."""
        zavg, zmax = slice_stats(x, self.slice_axis, self.needs_max)
        s = self.weights(zavg, zmax)
        return scale_slices(x, s, self.slice_axis), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(x)[0]


class KeySliceSelection(nn.Module):
    """Key-slice selection: slice weights ``(B, C, D)`` → boolean mask ``(B, C, D)``.

    Not a feature-map module (it has no parameters and maps slice weights to a mask);
    see :func:`key_slice_mask`.
    """

    def __init__(self, channels: int = 0, spatial_dims: int = 3, dim: int = -1) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.dim = dim

    def forward(self, slice_weights: torch.Tensor) -> torch.Tensor:
        return key_slice_mask(slice_weights, self.dim)


class KeySliceChannelAttention(nn.Module):
    """Channel SE whose descriptor is each channel's mean over its key slices.

    ``forward(x, mask=None)``: ``mask`` ``(B, C, D)`` boolean key slices along
    ``slice_axis``; ``None`` uses every slice (plain channel SE). FC ``C → C//min(r, C) → C``
    (``fc1``, ``fc2``), sigmoid, output ``x · t``. ``pooling`` ``avg`` (key-slice mean),
    ``max`` (key-slice max; the key-slice mean with ``reference_quirks``) or ``avg+max``
    (shared FC, logits summed). With ``detach_descriptor`` (default, as the reference) the
    descriptor carries no gradient; gradients reach ``x`` through the multiplication only.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, reduction: int = 8, pooling: str = "avg",
                 slice_axis: int = 0, reference_quirks: bool = False, detach_descriptor: bool = True) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.slice_axis = _check_axis(slice_axis, spatial_dims)
        self.pooling = _check_pooling(pooling)
        self.reference_quirks = bool(reference_quirks)
        self.detach_descriptor = bool(detach_descriptor)
        self.needs_max = self.pooling != "avg" and not self.reference_quirks
        hidden = channels // min(reduction, channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def descriptor(self, zavg: torch.Tensor, zmax: torch.Tensor | None, mask: torch.Tensor,
                   slice_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Key-slice mean and max ``(B, C)`` from per-slice statistics of the module input;
        with ``slice_weights`` ``s`` the statistics are those of ``x · s`` (``s > 0``)."""
        if slice_weights is not None:
            zavg = zavg * slice_weights
            zmax = None if zmax is None else zmax * slice_weights
        if self.detach_descriptor:
            zavg = zavg.detach()
            zmax = None if zmax is None else zmax.detach()
        m = mask.to(zavg.dtype)
        mean = (zavg * m).sum(-1) / m.sum(-1)
        if zmax is None or self.reference_quirks:
            return mean, mean
        return mean, zmax.masked_fill(~mask, float("-inf")).amax(-1)

    def weights(self, zavg: torch.Tensor, zmax: torch.Tensor | None, mask: torch.Tensor,
                slice_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Sigmoid channel weights ``t`` ``(B, C)``."""
        mean, mx = self.descriptor(zavg, zmax, mask, slice_weights)
        fc = lambda u: self.fc2(F.relu(self.fc1(u)))  # noqa: E731
        if self.pooling == "avg":
            logits = fc(mean)
        elif self.pooling == "max":
            logits = fc(mx)
        else:
            logits = fc(mean) + fc(mx)
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        zavg, zmax = slice_stats(x, self.slice_axis, self.needs_max)
        if mask is None:
            mask = torch.ones_like(zavg, dtype=torch.bool)
        t = self.weights(zavg, zmax, mask)
        return x * t.reshape(t.shape + (1,) * (x.dim() - 2))


class ProgressiveAttention(nn.Module):
    """PAM: slice attention → key-slice selection → key-slice channel attention.

    ``y = x · s ⊗ t`` where ``s`` ``(B, C, D)`` are the slice weights (``self.slice``, a
    :class:`SliceAttention`, reference "ag" flavour: ``clamp_reduction=False``, real max
    pooling) and ``t`` ``(B, C)`` the channel weights of ``self.channel`` (a
    :class:`KeySliceChannelAttention`) computed on the key slices of ``x · s``. Each
    sample selects its own key slices. ``pooling`` sets both ``slice_pooling`` and
    ``channel_pooling``; ``reference_quirks`` applies to the channel part (``max`` = mean).
    Shape ``(B, C, *spatial)`` → same.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        form: str = "fixed",
        spatial_size: Sequence[int] | None = None,
        num_slices: int | None = None,
        slice_axis: int = 0,
        slice_reduction: int = 16,
        channel_reduction: int = 8,
        clamp_reduction: bool = False,
        pooling: str | None = None,
        slice_pooling: str = "avg",
        channel_pooling: str = "avg",
        kernel_size: int = 5,
        hidden: int = 4,
        reference_quirks: bool = False,
        detach_descriptor: bool = True,
    ) -> None:
        super().__init__()
        if pooling is not None:
            slice_pooling = channel_pooling = pooling
        self.slice_axis = _check_axis(slice_axis, spatial_dims)
        self.slice = SliceAttention(channels, spatial_dims, form=form, spatial_size=spatial_size,
                                    num_slices=num_slices, slice_axis=slice_axis, reduction=slice_reduction,
                                    clamp_reduction=clamp_reduction, pooling=slice_pooling,
                                    kernel_size=kernel_size, hidden=hidden, reference_quirks=False)
        self.channel = KeySliceChannelAttention(channels, spatial_dims, reduction=channel_reduction,
                                                pooling=channel_pooling, slice_axis=slice_axis,
                                                reference_quirks=reference_quirks,
                                                detach_descriptor=detach_descriptor)
        self.needs_max = self.slice.needs_max or self.channel.needs_max

    def scales(self, zavg: torch.Tensor, zmax: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slice weights ``s`` ``(B, C, D)``, key-slice mask ``(B, C, D)`` and channel weights
        ``t`` ``(B, C)`` from the per-slice statistics of the input."""
        s = self.slice.weights(zavg, zmax)
        mask = key_slice_mask(s)
        t = self.channel.weights(zavg, zmax, mask, s)
        return s, mask, t

    def forward_with_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y, s, mask, t)``: output, slice weights, key-slice mask and channel weights."""
        zavg, zmax = slice_stats(x, self.slice_axis, self.needs_max)
        s, mask, t = self.scales(zavg, zmax)
        return scale_slices(x, s * t.unsqueeze(-1), self.slice_axis), s, mask, t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_masks(x)[0]


# ----------------------------------------------------------------------------------------
# reference checkpoints


def _take(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"reference state dict has no key {key!r}")
    return sd[key]


def load_reference_slice_weights(module: nn.Module, ref_state_dict: Mapping[str, torch.Tensor],
                                 prefix: str = "") -> None:
    """Copy a reference slice-SE site into a fixed-form :class:`SliceAttention` (or the
    slice part of a :class:`ProgressiveAttention`).

    The reference holds one module per channel, ``{prefix}Slice_SE_encoder.{c}.fc.0.weight``
    ``(D//r, D)``, ``.fc.0.bias``, ``.fc.2.weight`` ``(D, D//r)``, ``.fc.2.bias``; ours stacks
    the ``C`` per-channel tensors along a new leading dim (``fc1_weight[c] = fc.0.weight``…).
    ``prefix`` is e.g. ``"EncoderLayer1.encoder_sSE."``.
    """
    target = module.slice if isinstance(module, ProgressiveAttention) else module
    if not isinstance(target, SliceAttention) or target.form != "fixed":
        raise ValueError("reference slice weights load into a fixed-form SliceAttention or PAM")
    names = (("fc1_weight", "fc.0.weight"), ("fc1_bias", "fc.0.bias"),
             ("fc2_weight", "fc.2.weight"), ("fc2_bias", "fc.2.bias"))
    with torch.no_grad():
        for ours, theirs in names:
            param = getattr(target, ours)
            stacked = torch.stack([_take(ref_state_dict, f"{prefix}Slice_SE_encoder.{c}.{theirs}")
                                   for c in range(param.shape[0])])
            if stacked.shape != param.shape:
                raise ValueError(f"{prefix}Slice_SE_encoder.*.{theirs}: reference shape {tuple(stacked.shape)} "
                                 f"does not match {ours} {tuple(param.shape)}")
            param.copy_(stacked)


def load_reference_channel_weights(module: nn.Module, ref_state_dict: Mapping[str, torch.Tensor],
                                   prefix: str = "") -> None:
    """Copy a reference channel-SE site (``{prefix}fc.0.*``, ``{prefix}fc.2.*``) into a module
    with ``fc1``/``fc2`` linears (``cse``, ``ksca``, or the channel part of a PAM)."""
    target = module.channel if isinstance(module, ProgressiveAttention) else module
    with torch.no_grad():
        for ours, theirs in (("fc1", "fc.0"), ("fc2", "fc.2")):
            lin = getattr(target, ours)
            for attr in ("weight", "bias"):
                src = _take(ref_state_dict, f"{prefix}{theirs}.{attr}")
                dst = getattr(lin, attr)
                if src.shape != dst.shape:
                    raise ValueError(f"{prefix}{theirs}.{attr}: reference shape {tuple(src.shape)} does not match "
                                     f"{ours}.{attr} {tuple(dst.shape)}")
                dst.copy_(src)


def reference_slice_param_count(channels: int, num_slices: int, reduction: int, clamp: bool) -> int:
    """Reference parameter count of one slice-SE site: ``C·(2·D·(D//r) + D//r + D)``."""
    r = min(reduction, num_slices) if clamp else reduction
    dh = num_slices // r
    return channels * (2 * num_slices * dh + dh + num_slices)


# ----------------------------------------------------------------------------------------
# registry


@register_attention("slice", family="slice", aliases=("slice-se",),
                    description="Slice attention: per-channel FC over a fixed slice count (AMIS slice SE)")
def slice_attention(channels: int, spatial_dims: int = 3, spatial_size: Sequence[int] | None = None,
                    **kwargs: Any) -> nn.Module:
    kwargs.setdefault("form", "fixed")
    return SliceAttention(channels, spatial_dims, spatial_size=spatial_size, **kwargs)


@register_attention("slice-adaptive", family="slice",
                    description="Slice attention, size-agnostic: depthwise 1D convs along the slice axis")
def slice_adaptive(channels: int, spatial_dims: int = 3, spatial_size: Sequence[int] | None = None,
                   **kwargs: Any) -> nn.Module:
    kwargs.setdefault("form", "adaptive")
    return SliceAttention(channels, spatial_dims, spatial_size=spatial_size, **kwargs)


@register_attention("kss", family="slice", plugin_test=False,
                    description="Key-slice selection: softmax(slice weights) >= mean → boolean mask (no params)")
def kss(channels: int = 0, spatial_dims: int = 3, dim: int = -1) -> nn.Module:
    return KeySliceSelection(channels, spatial_dims, dim)


@register_attention("ksca", family="slice",
                    description="Channel SE on each channel's key slices (PAM's second stage)")
def ksca(channels: int, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    return KeySliceChannelAttention(channels, spatial_dims, **kwargs)


@register_attention("pam", family="slice", aliases=("progressive",),
                    description="Progressive Attention Module: slice attention → key slices → channel SE (AMIS)")
def pam(channels: int, spatial_dims: int = 3, spatial_size: Sequence[int] | None = None,
        **kwargs: Any) -> nn.Module:
    kwargs.setdefault("form", "fixed")
    return ProgressiveAttention(channels, spatial_dims, spatial_size=spatial_size, **kwargs)


@register_attention("pam-adaptive", family="slice",
                    description="PAM with the size-agnostic slice attention (any depth)")
def pam_adaptive(channels: int, spatial_dims: int = 3, spatial_size: Sequence[int] | None = None,
                 **kwargs: Any) -> nn.Module:
    kwargs.setdefault("form", "adaptive")
    return ProgressiveAttention(channels, spatial_dims, spatial_size=spatial_size, **kwargs)
