"""Validation during training: per-case scores of whole volumes (the inferers of ``attnseg
predict``, the Dice/HD95 of :mod:`attnseg.metrics` with its BraTS empty-region rules) or the
cheap pooled Dice of training-size patches; means over cases and ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from attnseg.infer import fastpath
from attnseg.infer.slicewise import slice_inferer
from attnseg.infer.sliding_window import SlidingWindowInferer
from attnseg.metrics.brats import REGIONS, binary_scores
from attnseg.metrics.core import dice
from attnseg.runtime.memory import is_out_of_memory, out_of_memory_message
from attnseg.train.data import MemoryCache, Volume, patch_dataset, region_target
from attnseg.train.distributed import DistInfo, all_reduce_sum, inference_precision
from attnseg.train.step import as_dict

LOG = logging.getLogger("attnseg.train")


def class_key(value: int, label_names: dict[Any, str] | None) -> str:
    """Column name of class ``value``: its label name (whitespace → ``_``) or the number."""
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    return "_".join(names[value].split()) if value in names else str(value)


def validation_scores(output: torch.Tensor, label: np.ndarray, kind: str, activated: str | None,
                      hd95: bool = False, spacing: Sequence[float] | None = None,
                      label_names: dict[Any, str] | None = None) -> dict[str, float]:
    """Per-case scores from whole-volume model output ``(1, C, *sp)`` and the class map ``label``
    ``(*sp)``.

    ``brats-regions``: Dice (and HD95, in mm with ``spacing``, else voxels) of ET, TC, WT from
    the per-channel sigmoid ≥ 0.5 (the last three channels are ET, TC, WT); ``classes``: per
    foreground class from the argmax, keyed by ``label_names[class]`` (spaces → ``_``) where
    given, else the class number. ``activated`` says whether the model already applied
    ``"sigmoid"``/``"softmax"``. Empty masks follow the BraTS legacy rules of
    :mod:`attnseg.metrics.brats`: both empty → Dice 1, HD95 0; one empty → Dice 0, HD95 373.13
    (HD95 capped there; MONAI's definition).
    """
    out = output[0].float()
    lab = torch.from_numpy(np.asarray(label).astype(np.int64))
    if kind == "brats-regions":
        thr = 0.5 if activated == "sigmoid" else 0.0
        pred = out[-3:] > thr
        ref = region_target(lab[None], 3)[0] > 0.5
        names = REGIONS
    else:
        cls = out.argmax(0)
        k = out.shape[0]
        pred = torch.stack([cls == c for c in range(1, k)])
        ref = torch.stack([lab == c for c in range(1, k)])
        names = tuple(class_key(c, label_names) for c in range(1, k))
    scores: dict[str, float] = {}
    for i, name in enumerate(names):
        if hd95:
            both = binary_scores(pred[i], ref[i], spacing, empty="brats")
            scores[f"dice_{name}"], scores[f"hd95_{name}"] = both["dice"], both["hd95"]
        else:  # Dice alone: no surface distances
            d = dice(pred[i], ref[i])
            scores[f"dice_{name}"] = 1.0 if math.isnan(d) else d  # both empty (BraTS legacy rule)
    return scores


def validate(model: nn.Module, vols: Sequence[Volume], cfg: dict[str, Any], device: torch.device, fast: bool,
             dd: DistInfo) -> dict[str, float]:
    """Scores as ``validation.mode`` says: :func:`validate_volumes` (``full``) or
    :func:`validate_patches` (``patches``)."""
    if cfg["validation"].get("mode", "full") == "patches":
        return validate_patches(model, vols, cfg, device, fast, dd)
    return validate_volumes(model, vols, cfg, device, fast, dd)


@torch.no_grad()
def validate_volumes(model: nn.Module, vols: Sequence[Volume], cfg: dict[str, Any], device: torch.device,
                     fast: bool, dd: DistInfo) -> dict[str, float]:
    """Mean :func:`validation_scores` over this rank's ``vols`` (at most ``validation.max_cases``)
    and all ranks, plus ``dice_mean`` (and ``hd95_mean``); ``{}`` when there is no case or a rank
    ran out of memory (logged; training goes on)."""
    vcfg, kind = cfg["validation"], cfg["task"]["kind"]
    was_training = model.training
    model.eval()
    amp = inference_precision(vcfg["precision"], device) == "bf16"
    activated = getattr(model, "eval_activation", None)
    nd = next(iter(vols)).image.ndim - 1 if vols else 3
    if cfg["data"].get("slice_axis") is not None:  # 2-D/2.5-D model: every slice of the volume
        inferer = slice_inferer(list(vcfg["roi_size"]), cfg["data"]["slice_axis"], int(cfg["data"]["context"]),
                                activation=None if activated else ("softmax" if kind == "classes" else "sigmoid"),
                                overlap=float(vcfg["overlap"]), blend=vcfg["blend"],
                                precision="bf16" if amp else "fp32", channels_last=fast)
    else:
        inferer = SlidingWindowInferer(list(vcfg["roi_size"])[-nd:], overlap=float(vcfg["overlap"]),
                                       sw_batch_size=int(vcfg["sw_batch_size"]), blend=vcfg["blend"],
                                       precision="bf16" if amp else "fp32", channels_last=fast)
    sums: dict[str, float] = {}
    oom: str | None = None
    for vol in vols[: vcfg["max_cases"] or None]:
        x = torch.from_numpy(np.asarray(vol.image, dtype=np.float32))[None].to(device)
        try:
            y = inferer(x, model)
        except Exception as exc:  # only out-of-memory is handled here
            if not is_out_of_memory(exc):
                raise
            oom = out_of_memory_message(
                exc, f"validation of case {vol.case_id}", roi=list(vcfg["roi_size"])[-nd:],
                sw_batch=int(vcfg["sw_batch_size"]), tta=False, device=device,
                options={"roi": "validation.roi_size", "sw_batch": "validation.sw_batch_size"})
            del exc, x
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        for k, v in validation_scores(y.cpu(), vol.label, kind, activated, bool(vcfg["hd95"]), vol.spacing,
                                      cfg["task"].get("label_names")).items():
            sums[k] = sums.get(k, 0.0) + v
        sums["_n"] = sums.get("_n", 0.0) + 1
    model.train(was_training)
    keys = sorted(k for k in sums if k != "_n") if sums else []
    if dd.world > 1:
        # ranks may hold different numbers of cases; agree on the key list first
        names: list[Any] = [None] * dd.world
        dist.all_gather_object(names, keys)
        keys = sorted({k for ks in names for k in ks})
    vec = all_reduce_sum(torch.tensor([sums.get(k, 0.0) for k in keys] + [sums.get("_n", 0.0), float(oom is not None)],
                                      dtype=torch.float64), dd)
    if float(vec[-1]) > 0:  # any rank ran out of memory: no partial scores, training goes on
        LOG.warning("validation skipped at this epoch: %s", oom or "out of memory on another rank")
        return {}
    vec = vec[:-1]
    n = float(vec[-1])
    if n == 0:
        return {}
    scores = {k: float(v) / n for k, v in zip(keys, vec[:-1])}
    dices = [v for k, v in scores.items() if k.startswith("dice_")]
    scores["dice_mean"] = sum(dices) / len(dices)
    hd = [v for k, v in scores.items() if k.startswith("hd95_")]
    if hd:
        scores["hd95_mean"] = sum(hd) / len(hd)
    return scores


@torch.no_grad()
def validate_patches(model: nn.Module, vols: Sequence[Volume], cfg: dict[str, Any], device: torch.device,
                     fast: bool, dd: DistInfo) -> dict[str, float]:
    """Cheap validation (``validation.mode: patches``, as nnU-Net's per-epoch pseudo Dice):
    ``validation.patches`` training-size patches (foreground-centred at
    ``data.foreground_fraction``, no augmentation, the same patches at every validation),
    split over the ranks; Dice per region/class from true/false positives and false negatives
    summed over all patches (``2TP / (2TP + FP + FN)``, 1 when both are empty). Cheaper than
    whole volumes but not comparable with them (patches miss most of the background).

    The counts stay on ``device`` and are pooled over patches and ranks, so the per-case
    functions of :mod:`attnseg.metrics` do not apply here."""
    vcfg, dcfg, kind = cfg["validation"], cfg["data"], cfg["task"]["kind"]
    was_training = model.training
    model.eval()
    amp = inference_precision(vcfg["precision"], device) == "bf16"
    activated = getattr(model, "eval_activation", None)
    n_out = 3 if kind == "brats-regions" else int(cfg["task"]["num_classes"]) - 1
    names = REGIONS if kind == "brats-regions" else tuple(class_key(c, cfg["task"].get("label_names"))
                                                          for c in range(1, n_out + 1))
    counts = torch.zeros(3, n_out, dtype=torch.float64, device=device)  # TP, FP, FN per region/class
    per_rank = -(-int(vcfg["patches"]) // dd.world)
    if vols:
        ds = patch_dataset(MemoryCache(vols), dcfg["patch_size"], per_rank, dcfg["foreground_fraction"], "none",
                           int(cfg["seed"]) + 7919 * (dd.rank + 1), None, dcfg.get("slice_axis"),
                           int(dcfg.get("context") or 0))
        ds.set_epoch(0)
        step = max(int(vcfg["sw_batch_size"]), 1)
        for start in range(0, per_rank, step):
            batch = torch.utils.data.default_collate([ds[j] for j in range(start, min(start + step, per_rank))])
            x = batch["image"].to(device)
            lab = batch["label"].to(device).long()
            if fast:
                x = fastpath.prepare_input(x)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = as_dict(model(x))["out"].float()
            if kind == "brats-regions":
                pred = out[:, -3:] > (0.5 if activated == "sigmoid" else 0.0)
                ref = region_target(lab, 3) > 0.5
            else:
                cls = out.argmax(1)
                pred = torch.stack([cls == c for c in range(1, n_out + 1)], 1)
                ref = torch.stack([lab == c for c in range(1, n_out + 1)], 1)
            dims = [0, *range(2, pred.dim())]
            counts += torch.stack([(pred & ref).sum(dims), (pred & ~ref).sum(dims), (~pred & ref).sum(dims)])
    model.train(was_training)
    tp, fp, fn = all_reduce_sum(counts, dd)
    denom = 2 * tp + fp + fn
    dices = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(denom))
    scores = {f"dice_{name}": float(d) for name, d in zip(names, dices)}
    scores["dice_mean"] = float(dices.mean())
    return scores
