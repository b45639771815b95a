"""Whole-volume inference with a 2-D (or 2.5-D) model: every slice along an axis, batched.

:class:`SliceInferer` has the call contract of
:class:`~attnseg.infer.sliding_window.SlidingWindowInferer` (``inferer(x, model)`` with ``x``
of shape ``(B, C, X, Y, Z)`` → ``(B, K, X, Y, Z)`` logits), so validation and ``attnseg
predict`` use it in place of the 3-D window. Slices are taken along ``axis`` in chunks of
``slice_batch``; each chunk is a batch of 2-D images ``(m, C·(2k+1), P, Q)`` built by
:func:`attnseg.data.slices.stack_slices` (the layout training used) and goes through the
in-plane inferer, a 2-D sliding window that pads slices smaller than its window and tiles
larger ones. ``axis="all"`` runs the three orthogonal directions and averages their
probabilities (returned as logits of the average, so thresholds and argmax apply unchanged).
"""

from __future__ import annotations

from typing import Any

import torch

from attnseg.data.slices import parse_slice_axis, stack_slices
from attnseg.infer.sliding_window import Predictor, SlidingWindowInferer

__all__ = ["SliceInferer", "slice_inferer"]


class SliceInferer:
    """Run a 2-D model over every slice of a volume and stack the outputs.

    Args:
        inferer: the in-plane :class:`SlidingWindowInferer` (2-D ``roi_size``); its
            ``sw_batch_size`` is how many slices (windows) go through the network at once.
        axis: slice axis (0 sagittal, 1 coronal, 2 axial, names accepted) or ``"all"``.
        context: ``k`` neighbouring slices on each side as extra channels (2.5-D).
        slice_batch: slices stacked per chunk (bounds the memory of the 2.5-D stacks).
        activation: ``"sigmoid"`` (region outputs), ``"softmax"`` (classes) or ``None`` (the
            model's outputs are probabilities already); used only to average the three
            directions of ``axis="all"``.

    2-D inputs ``(B, C, H, W)`` go straight to ``inferer`` (a 2-D model on 2-D images).
    """

    def __init__(self, inferer: SlidingWindowInferer, axis: int | str = 2, context: int = 0,
                 slice_batch: int = 16, activation: str | None = "sigmoid") -> None:
        if slice_batch < 1:
            raise ValueError(f"slice_batch must be >= 1, got {slice_batch}")
        if int(context) < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        if activation not in ("sigmoid", "softmax", None):
            raise ValueError(f"activation must be 'sigmoid', 'softmax' or None, got {activation!r}")
        self.inferer = inferer
        self.axis = parse_slice_axis(axis)
        self.context = int(context)
        self.slice_batch = int(slice_batch)
        self.activation = activation

    # the in-plane window's settings (messages such as the out-of-memory advice of predict read them)
    @property
    def roi_size(self) -> Any:
        return self.inferer.roi_size

    @property
    def sw_batch_size(self) -> int:
        return self.inferer.sw_batch_size

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        return self.inferer.mirror_axes

    def _one_axis(self, vol: torch.Tensor, axis: int, predictor: Predictor) -> torch.Tensor:
        """(C, X, Y, Z) → (K, X, Y, Z) logits from the slices along ``axis``."""
        n = vol.shape[1 + axis]
        out: torch.Tensor | None = None
        for z0 in range(0, n, self.slice_batch):
            z1 = min(n, z0 + self.slice_batch)
            stack = stack_slices(vol, axis, range(z0, z1), self.context)  # (m, C', P, Q)
            y = self.inferer(stack, predictor)  # (m, K, P, Q)
            if out is None:
                shape = [y.shape[1], *vol.shape[1:]]
                out = torch.empty(shape, dtype=y.dtype, device=y.device)
            # slice axis first, the in-plane axes keep their order: (n, K, P, Q)
            out.movedim(1 + axis, 0)[z0:z1] = y
        assert out is not None
        return out

    def _average(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Logits whose activation is the mean of the activated ``logits``."""
        if len(logits) == 1:
            return logits[0]
        eps = 1e-6
        if self.activation is None:
            return sum(t.float() for t in logits) / len(logits)
        if self.activation == "softmax":
            p = sum(torch.softmax(t.float(), 0) for t in logits) / len(logits)
            return torch.log(p.clamp_min(eps))
        p = (sum(torch.sigmoid(t.float()) for t in logits) / len(logits)).clamp(eps, 1 - eps)
        return torch.log(p) - torch.log1p(-p)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, predictor: Predictor) -> torch.Tensor:
        """Predict ``x`` (B, C, X, Y, Z) slice by slice → (B, K, X, Y, Z)."""
        if x.dim() == 4:
            if self.context:
                raise ValueError("a 2.5-D model (context > 0) needs 3-D volumes (B, C, X, Y, Z), "
                                 f"got shape {tuple(x.shape)}")
            return self.inferer(x, predictor)
        if x.dim() != 5:
            raise ValueError(f"slice-wise inference needs (B, C, X, Y, Z) volumes, got shape {tuple(x.shape)}")
        axes = (0, 1, 2) if self.axis == "all" else (int(self.axis),)
        outs = [self._average([self._one_axis(x[b], a, predictor) for a in axes]) for b in range(x.shape[0])]
        return torch.stack(outs)


def slice_inferer(roi_size: Any, axis: int | str = 2, context: int = 0, slice_batch: int = 16,
                  activation: str | None = "sigmoid", **window_kwargs: Any) -> SliceInferer:
    """A :class:`SliceInferer` over a new in-plane :class:`SlidingWindowInferer`.

    ``roi_size``: the in-plane window (2 values or an int); 3 values are accepted when the
    value along the slice axis is 1 or ≤ 0 (e.g. ``--roi 48 48 1`` for axial slices).
    ``window_kwargs``: the other :class:`SlidingWindowInferer` arguments; ``sw_batch_size``
    defaults to ``slice_batch`` and windows of a batch are not split on CPU (slices are small:
    one network call per batch amortises the per-call cost).
    """
    ax = parse_slice_axis(axis)
    if isinstance(roi_size, (list, tuple)) and len(roi_size) == 3:
        if ax == "all":
            if len({int(v) for v in roi_size}) != 1:
                raise ValueError(f"roi {tuple(roi_size)}: with the three orthogonal axes give 2 in-plane values")
            roi_size = list(roi_size[:2])
        else:
            if int(roi_size[ax]) > 1:
                raise ValueError(f"roi {tuple(roi_size)} for a 2-D model on slices along axis {ax}: give the "
                                 f"2 in-plane values (or 1 along the slice axis)")
            roi_size = [int(v) for i, v in enumerate(roi_size) if i != ax]
    elif isinstance(roi_size, (list, tuple)) and len(roi_size) == 1:
        roi_size = int(roi_size[0])
    window_kwargs.setdefault("sw_batch_size", slice_batch)
    window_kwargs.setdefault("split_cpu_batches", False)
    return SliceInferer(SlidingWindowInferer(roi_size, **window_kwargs), ax, context, slice_batch, activation)
