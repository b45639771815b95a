"""Segmentation losses, deep supervision and PANet's prior loss.

Shapes: ``logits`` are ``(B, C, *spatial)`` (2D or 3D). ``target`` is either a class-index
map ``(B, *spatial)`` (integer) — one-hot encoded inside the loss — or a multi-channel map
``(B, C, *spatial)`` of floats in [0, 1] (e.g. the overlapping BraTS regions
``(bg, ET, TC, WT)``). Every loss returns a scalar averaged over batch and channels.

Cross-entropy terms of :class:`DiceCELoss` come in named variants because MONAI changed
their meaning between versions (see docs/training.md):

``"argmax"``  MONAI 0.5–0.8 behaviour, with which the PANet reference was trained: a
              multi-channel target is reduced with ``argmax`` over channels and softmax CE is
              applied; for a 1-channel output the CE term is 0 (the loss is pure Dice).
``"soft"``    MONAI ≥ 1.3 behaviour (this is exactly ``monai.losses.DiceCELoss`` in 1.6):
              soft-target softmax CE ``-Σ_c t_c log softmax(x)_c`` for several channels,
              BCE with logits for one channel.
``"bce"``     per-channel BCE with logits (region-wise sigmoid loss for overlapping regions).
``"none"``    no CE term.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CE_MODES = ("argmax", "soft", "bce", "none")


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class map ``(B, *sp)`` → float one-hot ``(B, C, *sp)``."""
    oh = F.one_hot(target.long(), num_classes)  # (B, *sp, C)
    return oh.movedim(-1, 1).float()


def as_channels(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bring ``target`` to the float ``(B, C, *sp)`` layout of ``logits``."""
    if target.dim() == logits.dim() - 1:
        return one_hot(target, logits.shape[1]).to(logits.dtype)
    if target.shape[1] != logits.shape[1]:
        if target.shape[1] == 1 and not torch.is_floating_point(target):
            return one_hot(target[:, 0], logits.shape[1]).to(logits.dtype)
        raise ValueError(f"target has {target.shape[1]} channels but the output has {logits.shape[1]}")
    return target.to(logits.dtype)


def as_class_map(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Integer class map ``(B, *sp)``; a multi-channel target is reduced by argmax over channels
    (the first maximal channel wins, as in ``torch.argmax``)."""
    if target.dim() == logits.dim() - 1:
        return target.long()
    if target.shape[1] == 1 and not torch.is_floating_point(target):
        return target[:, 0].long()
    return target.argmax(dim=1)


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation in ("none", None):
        return logits
    raise ValueError(f"activation must be softmax, sigmoid or none, got {activation!r}")


class DiceLoss(nn.Module):
    """Soft Dice loss ``1 − (2Σpt + s_nr) / (Σp^k + Σt^k + s_dr)`` per channel, mean over channels.

    ``squared=True`` uses ``k = 2`` (V-Net style, PANet reference), else ``k = 1``. The sums run
    over the spatial axes of each sample (``batch=False``, MONAI's default) or over the whole
    batch (``batch=True``, the AMIS reference's BinaryDiceLoss). ``include_background=False``
    drops channel 0.
    """

    def __init__(self, activation: str = "softmax", squared: bool = False, include_background: bool = True,
                 batch: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        _activate(torch.zeros(1, 1), activation)  # validates the name
        self.activation, self.squared = activation, squared
        self.include_background, self.batch = include_background, batch
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = as_channels(target, logits)
        p = _activate(logits.float(), self.activation)
        t = t.float()
        if not self.include_background:
            p, t = p[:, 1:], t[:, 1:]
        dims = tuple(range(2, p.dim()))
        if self.batch:
            dims = (0, *dims)
        inter = (p * t).sum(dims)
        den = (p * p).sum(dims) + (t * t).sum(dims) if self.squared else p.sum(dims) + t.sum(dims)
        return (1.0 - (2.0 * inter + self.smooth_nr) / (den + self.smooth_dr)).mean()


class CELoss(nn.Module):
    """Cross-entropy in one of the variants of :data:`CE_MODES` (``weight``: per-class weights
    for the softmax variants)."""

    def __init__(self, mode: str = "argmax", weight: list[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        if mode not in CE_MODES:
            raise ValueError(f"CE mode must be one of {CE_MODES}, got {mode!r}")
        self.mode = mode
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        multi = target.dim() == logits.dim() and target.shape[1] == logits.shape[1] and logits.shape[1] > 1
        if self.mode == "none":
            return logits.new_zeros(())
        if self.mode == "bce" or (logits.shape[1] == 1 and self.mode == "soft"):
            return F.binary_cross_entropy_with_logits(logits, as_channels(target, logits))
        if logits.shape[1] == 1:  # "argmax": argmax over one channel is always 0 → CE ≡ 0
            return logits.sum() * 0.0
        if self.mode == "soft" and multi:
            return F.cross_entropy(logits, as_channels(target, logits), weight=self.weight)
        return F.cross_entropy(logits, as_class_map(target, logits), weight=self.weight)


class DiceCELoss(nn.Module):
    """``lambda_dice · Dice + lambda_ce · CE``; defaults reproduce the PANet reference's
    ``DiceCELoss(sigmoid=True, squared_pred=True)`` with the CE variant ``ce`` (see module doc)."""

    def __init__(self, activation: str = "sigmoid", squared: bool = True, ce: str = "argmax",
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, include_background: bool = True,
                 batch: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 ce_weight: list[float] | None = None) -> None:
        super().__init__()
        self.dice = DiceLoss(activation, squared, include_background, batch, smooth_nr, smooth_dr)
        self.ce = CELoss(ce, ce_weight)
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_ce * self.ce(logits, target)


class FocalLoss(nn.Module):
    """Focal loss ``−α_c (1 − p_t)^γ log p_t``, mean over voxels (and channels for sigmoid).

    ``activation="softmax"``: ``p_t`` is the softmax probability of the true class (class-map
    or argmax of the target). ``"sigmoid"``: per-channel binary focal loss on float targets.
    ``detach_modulator=True`` treats ``(1 − p_t)^γ`` as a constant, as the AMIS reference does.
    """

    def __init__(self, gamma: float = 2.0, alpha: list[float] | None = None, activation: str = "softmax",
                 detach_modulator: bool = False) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"focal activation must be softmax or sigmoid, got {activation!r}")
        self.gamma, self.activation, self.detach_modulator = gamma, activation, detach_modulator
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.activation == "softmax":
            cls = as_class_map(target, logits).unsqueeze(1)
            logp_t = torch.log_softmax(logits, dim=1).gather(1, cls)
            alpha = None if self.alpha is None else self.alpha[cls]
        else:
            t = as_channels(target, logits)
            # log p_t for a binary label t: log σ(x) if t = 1, log σ(−x) if t = 0
            logp_t = -F.binary_cross_entropy_with_logits(logits, t, reduction="none")
            alpha = None if self.alpha is None else self.alpha.view(1, -1, *([1] * (logits.dim() - 2)))
        mod = (1.0 - logp_t.exp()).pow(self.gamma)
        if self.detach_modulator:
            mod = mod.detach()
        loss = -mod * logp_t
        if alpha is not None:
            loss = loss * alpha
        return loss.mean()


class DiceFocalLoss(nn.Module):
    """Dice + focal (AnatomyNet's hybrid loss): ``lambda_dice · Dice + lambda_focal · Focal``."""

    def __init__(self, activation: str = "softmax", squared: bool = False, gamma: float = 2.0,
                 alpha: list[float] | None = None, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 include_background: bool = True, batch: bool = False) -> None:
        super().__init__()
        self.dice = DiceLoss(activation, squared, include_background, batch)
        self.focal = FocalLoss(gamma, alpha, activation)
        self.lambda_dice, self.lambda_focal = lambda_dice, lambda_focal

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_focal * self.focal(logits, target)


class CombinedBoostedLoss(nn.Module):
    """The AMIS reference's "CBL": softmax Dice over the whole batch (plain sums, smooth 1e-5 on
    both sides) + class-weighted cross-entropy.

    ``class_weights`` are the per-class CE weights (the reference reads them from a text file).
    :meth:`feedback` implements the reference's boosting step from the foreground Dice ``d_k``:
    ``coeff_k = (median(d) − m) / (d_k − m)`` with ``m = min(d) − 0.05``; after it the CE is
    computed per voxel, multiplied by ``coeff`` of the voxel's (foreground) class — background
    voxels get weight 0 — and averaged.
    """

    def __init__(self, class_weights: list[float] | None = None, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice = DiceLoss("softmax", squared=False, batch=True, smooth_nr=smooth, smooth_dr=smooth)
        self.register_buffer("class_weights",
                             None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32))
        self.register_buffer("coeff", torch.zeros(0))

    @torch.no_grad()
    def feedback(self, foreground_dice: list[float] | torch.Tensor) -> torch.Tensor:
        """Update the boosting coefficients from the training Dice of classes 1..C-1."""
        # on the module's device whatever the Dice came as (a list, a CPU or a GPU tensor)
        d = torch.as_tensor(foreground_dice, dtype=torch.float32).to(self.coeff.device)
        m = d.min() - 0.05
        self.coeff = (d.median() - m) / (d - m)
        return self.coeff

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cls = as_class_map(target, logits)
        dice = self.dice(logits, target)
        if self.coeff.numel() == 0:
            return dice + F.cross_entropy(logits.float(), cls, weight=self.class_weights)
        per_voxel = F.cross_entropy(logits.float(), cls, reduction="none")
        coeff = self.coeff.to(logits.device)
        w = torch.cat([coeff.new_zeros(1), coeff])[cls]
        return dice + (per_voxel * w).mean()


class PriorLoss(nn.Module):
    """PANet's prior loss: a binary loss between the 1-channel ``stage1`` logits and the whole
    tumour mask. ``loss`` is the binary criterion (default: sigmoid squared Dice, CE term off,
    as the reference's DiceCELoss behaved for one channel in MONAI 0.5–0.8)."""

    def __init__(self, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.loss = loss or DiceLoss("sigmoid", squared=True)

    def forward(self, stage1: torch.Tensor, whole_tumour: torch.Tensor) -> torch.Tensor:
        if whole_tumour.dim() == stage1.dim() - 1:
            whole_tumour = whole_tumour.unsqueeze(1)
        return self.loss(stage1, whole_tumour.to(stage1.dtype))


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the model's outputs ``{"out", "level1", ...}``.

    ``weights`` maps output names to weights (outputs without a weight, e.g. ``stage1``, are
    ignored; the default is the reference's equal weights on out/level3/level2/level1, summed,
    not normalised). Outputs smaller than the target are handled by ``mode``:
    ``"upsample_logits"`` (default, as PANet: logits resized to the target grid with
    (bi/tri)linear interpolation) or ``"downsample_target"`` (the target is resized to the
    output grid with nearest-neighbour sampling, as nnU-Net does).
    """

    def __init__(self, loss: nn.Module, weights: Mapping[str, float] | None = None,
                 mode: str = "upsample_logits") -> None:
        super().__init__()
        if mode not in ("upsample_logits", "downsample_target"):
            raise ValueError(f"deep supervision mode must be upsample_logits or downsample_target, got {mode!r}")
        self.loss, self.mode = loss, mode
        self.weights = dict(weights or {"out": 1.0, "level3": 1.0, "level2": 1.0, "level1": 1.0})

    def forward(self, outputs: Mapping[str, torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = {"out": outputs}
        total = None
        for name, w in self.weights.items():
            if name not in outputs or w == 0:
                continue
            term = w * self.loss(*self._match(outputs[name], target))
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"none of the weighted outputs {sorted(self.weights)} is in the model output "
                             f"{sorted(outputs)}")
        return total

    def _match(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = tuple(target.shape[-(logits.dim() - 2):])
        if tuple(logits.shape[2:]) == size:
            return logits, target
        if self.mode == "upsample_logits":
            mode = "bilinear" if logits.dim() == 4 else "trilinear"
            return F.interpolate(logits, size=size, mode=mode, align_corners=False), target
        t = target if target.dim() == logits.dim() else target.unsqueeze(1)
        t = F.interpolate(t.float(), size=tuple(logits.shape[2:]), mode="nearest")
        return logits, (t if target.dim() == logits.dim() else t[:, 0].to(target.dtype))


LOSSES: dict[str, type[nn.Module]] = {
    "dice": DiceLoss,
    "ce": CELoss,
    "dice_ce": DiceCELoss,
    "focal": FocalLoss,
    "dice_focal": DiceFocalLoss,
    "cbl": CombinedBoostedLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name (:data:`LOSSES`); ``kwargs`` go to its constructor."""
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    try:
        return LOSSES[key](**kwargs)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: {exc}") from exc


class TrainingLoss(nn.Module):
    """The complete training objective: deep-supervised main loss + weighted prior loss.

    ``forward(outputs, target, whole_tumour)`` returns ``(total, parts)`` where ``parts`` holds
    the detached terms (``main``, ``prior``) for logging.
    """

    def __init__(self, main: nn.Module, prior: nn.Module | None = None, prior_weight: float = 1.0) -> None:
        super().__init__()
        self.main, self.prior, self.prior_weight = main, prior, prior_weight

    def forward(self, outputs: Mapping[str, torch.Tensor] | torch.Tensor, target: torch.Tensor,
                whole_tumour: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(outputs, torch.Tensor):
            outputs = {"out": outputs}
        total = self.main(outputs, target)
        parts = {"main": total.detach()}
        if self.prior is not None and "stage1" in outputs:
            if whole_tumour is None:
                raise ValueError("the model has a 'stage1' prior output but no whole-tumour target was given")
            prior = self.prior(outputs["stage1"], whole_tumour)
            parts["prior"] = prior.detach()
            total = total + self.prior_weight * prior
        return total, parts


def build_training_loss(loss_cfg: Mapping[str, Any], task_kind: str) -> TrainingLoss:
    """Build :class:`TrainingLoss` from the ``loss:`` section of a config."""
    kwargs = dict(loss_cfg.get("kwargs") or {})
    name = loss_cfg.get("name", "dice_ce")
    if name in ("dice", "dice_ce", "focal", "dice_focal") and "activation" not in kwargs:
        kwargs["activation"] = "sigmoid" if task_kind == "brats-regions" else "softmax"
    if name == "ce" and "mode" not in kwargs and task_kind == "brats-regions":
        kwargs["mode"] = "bce"
    base = build_loss(name, **kwargs)
    ds = loss_cfg.get("deep_supervision") or {}
    weights = dict(ds.get("weights") or {}) if ds.get("enabled") else {"out": 1.0}
    main = DeepSupervisionLoss(base, weights or None, ds.get("mode", "upsample_logits"))
    pcfg = loss_cfg.get("prior") or {}
    prior = None
    if pcfg.get("enabled", "auto") is not False:
        pkw = dict(pcfg.get("kwargs") or {})
        pname = pcfg.get("name", "dice")
        if pname in ("dice", "dice_ce", "focal", "dice_focal"):
            pkw.setdefault("activation", "sigmoid")
        if pname in ("dice", "dice_ce"):
            pkw.setdefault("squared", True)  # the reference's binary DiceCE(squared_pred=True)
        prior = PriorLoss(build_loss(pname, **pkw))
    return TrainingLoss(main, prior, float(pcfg.get("weight", 1.0)))
