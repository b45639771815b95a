"""One training step: the batch loop over a DataLoader, forward + loss, backward with gradient
clipping and the non-finite guard, and the per-epoch mean of the losses over ranks.

Also the set-up choices a step depends on: ``torch.compile`` or not, and whether DDP must look
for parameters without gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from attnseg.infer import fastpath
from attnseg.runtime.errors import FaultError
from attnseg.train.data import region_target
from attnseg.train.distributed import DistInfo, all_reduce_sum, any_rank, unused_parameters
from attnseg.train.guard import NonFiniteGuard

LOG = logging.getLogger("attnseg.train")


def as_dict(out: Any) -> dict[str, torch.Tensor]:
    """A model's output as a dict: models return a tensor or ``{"out": tensor, <heads>...}``."""
    return out if isinstance(out, dict) else {"out": out}


def compile_wanted(spec: Any, device: torch.device) -> bool:
    """``train.compile``: true, false, or auto (on CUDA only; on CPU the compilation costs far
    more than it saves in a short run, see docs/benchmarks.md)."""
    return device.type == "cuda" if spec == "auto" else bool(spec)


def batches(loader: Any, epoch: int, iteration: int, last_good: list[str]) -> Iterator[tuple[int, Any]]:
    """``enumerate(loader, 1)``, with a DataLoader worker that died (killed by the OOM killer or a
    signal) turned into one line naming where training stopped and what to resume from.

    ``epoch`` and ``iteration`` are 0-based counts done before this epoch; ``last_good[0]``
    names the last checkpoint written from a good state.
    """
    it = iter(loader)
    step = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            text = str(exc)
            if "DataLoader worker" not in text:
                raise
            raise FaultError(f"data loading stopped at epoch {epoch + 1}, iteration {iteration + step + 1}: "
                             f"{text.splitlines()[0].rstrip('. ')} (killed for lack of memory? lower data.workers "
                             f"or data.batch_size); resume with --resume from {last_good[0]}") from exc
        step += 1
        yield step, batch


def forward_loss(model: nn.Module, criterion: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                 fast: bool, amp_dtype: torch.dtype | None,
                 kind: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Forward (under autocast when ``amp_dtype`` is set) and loss (fp32) of one batch.

    ``batch``: ``image`` ``(B, C, *spatial)`` and ``label`` ``(B, *spatial)`` class map; ``kind``
    ``brats-regions`` turns the label into ET/TC/WT region targets. ``fast``: the CPU fast
    path's channels-last input. Returns ``(loss, loss parts, B)``.
    """
    x = batch["image"].to(device, non_blocking=True)
    lab = batch["label"].to(device, non_blocking=True)
    if fast:
        x = fastpath.prepare_input(x)
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with ctx:
        outputs = as_dict(model(x))
    out_ch = outputs["out"].shape[1]
    target = region_target(lab, out_ch) if kind == "brats-regions" else lab
    wt = (lab > 0).float().unsqueeze(1)
    loss, parts = criterion(outputs, target, wt)
    return loss, parts, int(x.shape[0])


def clip_gradients(model: nn.Module, max_norm: float | None) -> torch.Tensor | None:
    """Clip the global gradient norm when ``max_norm`` is set; returns the norm before clipping."""
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), float(max_norm))
    return None


def backward_step(loss: torch.Tensor, raw: nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None, guard: NonFiniteGuard, grad_clip: float | None,
                  epoch: int, iteration: int, log: bool) -> None:
    """Backward, clip and optimizer step of a finite ``loss``; a step with Inf/NaN gradients is
    skipped (by the scaler, or by ``guard`` without one) and counted by ``guard``.

    ``raw``: the plain module (not the DDP/compiled wrapper); ``epoch``/``iteration`` are the
    1-based numbers for messages; ``log``: this rank writes warnings.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        clip_gradients(raw, grad_clip)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        # the scaler skipped the step when its scale went down (Inf/NaN gradients)
        guard.scaler_step(scaler.get_scale() < scale, epoch=epoch, iteration=iteration)
        return
    loss.backward()
    norm = clip_gradients(raw, grad_clip)
    if guard.grads_ok(raw.parameters(), epoch=epoch, iteration=iteration, total_norm=norm):
        optimizer.step()
    elif log:
        LOG.warning("epoch %d iteration %d: non-finite gradient, step skipped", epoch, iteration)


def find_unused(cfg: dict[str, Any], model: nn.Module, criterion: nn.Module, dataset: Any, device: torch.device,
                fast: bool, amp_dtype: torch.dtype | None, dd: DistInfo) -> bool:
    """DDP's ``find_unused_parameters``: ``distributed.find_unused_parameters`` when set, else
    (``auto``) whether one probe step (first training sample, RNG and buffers put back) leaves
    a parameter without gradient on any rank. The flag costs a graph traversal every iteration."""
    spec = cfg["distributed"].get("find_unused_parameters", "auto")
    if spec != "auto":
        return bool(spec)
    batch = torch.utils.data.default_collate([dataset[0]])
    names = unused_parameters(model, lambda: forward_loss(model, criterion, batch, device, fast, amp_dtype,
                                                          cfg["task"]["kind"])[0])
    found = any_rank(bool(names), dd)
    if found and dd.main:
        LOG.info("%d parameter tensor(s) get no gradient (%s%s): DDP runs with find_unused_parameters",
                 len(names), ", ".join(names[:3]), ", ..." if len(names) > 3 else "")
    return found


def reduce_mean(sums: dict[str, torch.Tensor], count: int, dd: DistInfo) -> dict[str, float]:
    """Mean over ``count`` iterations and all ranks of per-iteration sums (one all-reduce on the
    backend's device)."""
    if not sums:
        return {}
    keys = sorted(sums)
    vec = torch.stack([torch.as_tensor(sums[k]).detach().to(dd.reduce_device, torch.float64).reshape(())
                       for k in keys])
    vec = all_reduce_sum(vec, dd)
    return {k: float(v) / (count * dd.world) for k, v in zip(keys, vec)}
