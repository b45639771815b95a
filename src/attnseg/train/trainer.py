"""The training loop: ``run_training(config) -> RunResult``.

One function drives single-process and ``torchrun`` (DistributedDataParallel) training alike:
data plan, model, loss, optimiser and per-iteration schedule, mixed precision, validation,
checkpoints that resume exactly, and the run folder (rank 0 writes it alone). See
docs/training.md for the configuration and the guarantees.

The loop's parts live beside it: :mod:`~attnseg.train.cases` (which cases),
:mod:`~attnseg.train.step` (one step), :mod:`~attnseg.train.validation`,
:mod:`~attnseg.train.run_folder` (files, logging, progress),
:mod:`~attnseg.train.reproducibility` (seeds, environment) and
:mod:`~attnseg.train.distributed` (DDP, devices, RNG state).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from attnseg.data.dataset import worker_init_fn
from attnseg.infer import fastpath
from attnseg.infer.predict import model_spatial_dims
from attnseg.metrics.brats import REGIONS
from attnseg.models import create_model
from attnseg.runtime.cpu import enable_cpu_fastpaths
from attnseg.runtime.lock import FolderLock
from attnseg.train.cases import load_cases
from attnseg.train.checkpoint import load_checkpoint, model_checkpoint
from attnseg.train.config import resolve_config
from attnseg.train.data import EpochPlan, MemoryCache, Volume, model_kwargs, patch_dataset, preprocess_config
from attnseg.train.distributed import (
    DistInfo,
    EpochTagged,
    EpochTaggedBatches,
    all_digests,
    any_rank,
    configure_determinism,
    deterministic_for,
    pick_device,
    resolve_precision,
    restore_determinism,
    rng_state,
    set_rng_state,
    setup_distributed,
)
from attnseg.train.guard import NonFiniteGuard
from attnseg.train.losses import build_training_loss
from attnseg.train.reproducibility import env_info, seed_everything
from attnseg.train.run_folder import Progress, RunFolder, format_row, resolve_resume
from attnseg.train.schedules import PlateauSchedule, build_optimizer, build_schedule
from attnseg.train.step import (
    backward_step,
    batches,
    compile_wanted,
    find_unused,
    forward_loss,
    reduce_mean,
)
from attnseg.train.validation import validate

LOG = logging.getLogger("attnseg.train")


@dataclass
class RunResult:
    """What a finished (or stopped) training run produced."""

    run_dir: Path
    best_metric: float | None
    best_epoch: int | None
    epochs_done: int
    iterations: int
    history: list[dict[str, Any]] = field(default_factory=list)
    weight_digests: list[str] = field(default_factory=list)  # one per rank; equal when in sync


# ----------------------------------------------------------------------------------------------
# process set-up: device, process group, determinism, folder lock, run folder


def run_training(config: dict[str, Any], resume: str | os.PathLike | bool | None = None,
                 volumes: tuple[Sequence[Volume], Sequence[Volume]] | None = None) -> RunResult:
    """Train as ``config`` says (merged over :data:`attnseg.train.config.DEFAULTS`).

    ``resume``: ``True``/``"last"`` continues from ``<run_dir>/checkpoints/last.pt``, a path
    continues from that checkpoint (or run folder). ``volumes=(train, val)`` trains on
    in-memory :class:`~attnseg.train.data.Volume` lists instead of ``data.root``.
    Under ``torchrun`` (``WORLD_SIZE > 1``) it runs DistributedDataParallel on every rank.
    """
    cfg = resolve_config(config)
    device = pick_device(cfg["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    own_group = not dist.is_initialized()
    dd = setup_distributed(cfg["distributed"]["backend"], device)
    own_group = own_group and dist.is_initialized()
    flags = configure_determinism(deterministic_for(cfg["train"]["deterministic"], device), device)
    try:
        result = _run(cfg, device, dd, resume, volumes)
        if own_group:
            # gloo aborts a rank that tears its group down while a peer still writes the
            # checkpoint ("terminate called without an active exception"): leave together
            dist.barrier()
        return result
    finally:
        restore_determinism(flags)
        if own_group:
            dist.destroy_process_group()


def _run(cfg: dict[str, Any], device: torch.device, dd: DistInfo, resume: str | os.PathLike | bool | None,
         volumes: tuple[Sequence[Volume], Sequence[Volume]] | None) -> RunResult:
    seed_everything(int(cfg["seed"]))
    fast = bool(cfg["train"]["fastpath"]) and device.type == "cpu"
    if fast:
        enable_cpu_fastpaths()  # process-wide: the trainer opts in (train.fastpath)
    run_dir = Path(cfg["output_dir"]) / cfg["name"]
    new_folder = not run_dir.exists()
    # one training process (rank 0) per run folder: a second is refused with the first's pid and host
    lock = FolderLock(run_dir, "training")
    if dd.main:
        lock.acquire()
    try:
        return _run_locked(cfg, device, dd, resume, volumes, run_dir, new_folder, fast, lock)
    finally:
        lock.release()


def _run_locked(cfg: dict[str, Any], device: torch.device, dd: DistInfo, resume: str | os.PathLike | bool | None,
                volumes: tuple[Sequence[Volume], Sequence[Volume]] | None, run_dir: Path, new_folder: bool,
                fast: bool, lock: FolderLock) -> RunResult:
    ckpt_path = resolve_resume(resume, run_dir)
    ckpt = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
    elif (run_dir / "checkpoints" / "last.pt").exists():
        raise ValueError(f"{run_dir} already holds a run; resume it with --resume or choose another --name")
    folder = RunFolder(run_dir, dd.main, cfg)
    if dd.main and lock.taken_over is not None:
        LOG.warning("%s", lock.describe_takeover())
    if dd.main:
        LOG.setLevel(logging.INFO)
        folder.start(cfg, env_info(device, dd.world))
    try:
        return _train(cfg, device, dd, fast, folder, ckpt, volumes, ckpt_path)
    except BaseException as exc:
        if dd.main:
            if isinstance(exc, KeyboardInterrupt):
                LOG.info("interrupted by the user (Ctrl-C)")
            else:  # into log.txt; the command line prints the error itself
                folder.stop_echo()
                LOG.error("training failed: %s: %s", type(exc).__name__, exc)
        folder.close()
        # a run that failed before its first checkpoint leaves nothing behind (no empty run folder)
        if dd.main and new_folder and not isinstance(exc, KeyboardInterrupt) and \
                not any((run_dir / "checkpoints").glob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        folder.close()


# ----------------------------------------------------------------------------------------------
# the loop


def _train(cfg: dict[str, Any], device: torch.device, dd: DistInfo, fast: bool, folder: RunFolder,
           ckpt: dict[str, Any] | None, volumes: tuple[Sequence[Volume], Sequence[Volume]] | None,
           ckpt_path: Path | None = None) -> RunResult:
    """Epochs from the checkpoint's (or 0) to ``train.epochs``, or fewer (``train.stop_after_epochs``,
    the ``train.max_minutes`` budget): train, validate when due, log a row, checkpoint when due."""
    run = _setup(cfg, device, dd, fast, folder, volumes, ckpt, ckpt_path)
    tr, epochs = cfg["train"], int(cfg["train"]["epochs"])
    stop_after = tr["stop_after_epochs"]
    end_epoch = epochs if stop_after is None else min(epochs, run.start_epoch + int(stop_after))
    budget_s = None if tr.get("max_minutes") is None else float(tr["max_minutes"]) * 60.0
    t_start = time.perf_counter()
    digests: list[str] = []
    for epoch in range(run.start_epoch, end_epoch):
        t0 = time.perf_counter()
        row = _train_epoch(run, epoch)
        # a wall-clock budget ends the run after this epoch (validated and checkpointed like the last one)
        out_of_time = budget_s is not None and any_rank(time.perf_counter() - t_start >= budget_s, dd)
        if out_of_time:
            end_epoch = epoch + 1
            if dd.main:
                LOG.info("time budget of %.1f min used up after epoch %d", budget_s / 60, epoch + 1)
        interval = int(cfg["validation"]["interval"])
        do_val = interval > 0 and ((epoch + 1) % interval == 0 or epoch + 1 == epochs or out_of_time)
        improved = bool(do_val and run.n_val) and _validate_epoch(run, epoch, row)
        row["time_s"] = round(time.perf_counter() - t0, 3)
        folder.add_row(row)
        if dd.main:
            LOG.info(format_row(row))
        last_epoch = epoch + 1 == end_epoch
        digests = all_digests(run.raw, dd) if last_epoch else []
        if (epoch + 1) % max(int(tr["checkpoint_interval"]), 1) == 0 or do_val or last_epoch:
            if dd.main:
                run.last_good[0] = folder.save_checkpoints(_checkpoint(run, epoch, digests), improved)
            if do_val:
                folder.plot_curves()
        if out_of_time:
            break
    if not digests:  # nothing left to train (resumed a finished run)
        digests = all_digests(run.raw, dd)
    if dd.main and len(set(digests)) > 1:
        LOG.warning("weights differ between ranks: %s", digests)
    run.progress.close()
    return RunResult(folder.path, run.best, run.best_epoch, end_epoch, run.iteration, list(folder.rows), digests)


@dataclass
class _Run:
    """What the loop works with: set-up (built once by :func:`_setup`) and where the run stands."""

    cfg: dict[str, Any]
    device: torch.device
    dd: DistInfo
    fast: bool
    folder: RunFolder
    model: nn.Module  # what the steps call: ``raw``, maybe wrapped by DDP and torch.compile
    raw: nn.Module  # the plain module: checkpoints, validation, gradient clipping
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    compiled: bool
    iters: int  # iterations per epoch
    loader: torch.utils.data.DataLoader
    batches: EpochTaggedBatches  # the loader's sampler, told the epoch
    guard: NonFiniteGuard
    progress: Progress
    # the last checkpoint written from a good state (one item, shared with the guard), named when
    # training stops on a fault
    last_good: list[str]
    val_vols: list[Volume]  # this rank's
    n_val: int  # over all ranks
    start_epoch: int = 0
    iteration: int = 0  # iterations done
    best: float | None = None
    best_epoch: int | None = None


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One pass over the epoch's batches (``epoch`` 0-based); returns its row of ``metrics.csv``
    (epoch, iteration, lr, mean losses over iterations and ranks, skipped steps)."""
    cfg, dd, guard, progress = run.cfg, run.dd, run.guard, run.progress
    log_every = max(int(cfg["log"]["interval"]), 1)
    run.batches.set_epoch(epoch)
    run.model.train()
    sums: dict[str, torch.Tensor] = {}
    guard.new_epoch()
    progress.start(epoch, int(cfg["train"]["epochs"]), run.iters)
    for step, batch in batches(run.loader, epoch, run.iteration, run.last_good):
        t_step = time.perf_counter()
        loss, parts, n_batch = forward_loss(run.model, run.criterion, batch, run.device, run.fast, run.amp_dtype,
                                            cfg["task"]["kind"])
        # a NaN/Inf loss is skipped (no backward, no optimizer or scaler step) and counted; the guard
        # stops the run after train.max_nonfinite_steps in a row (one host sync per step)
        finite = guard.loss_ok(loss, epoch=epoch + 1, iteration=run.iteration + 1)
        if finite:
            backward_step(loss, run.raw, run.optimizer, run.scaler, guard, cfg["train"]["grad_clip"], epoch + 1,
                          run.iteration + 1, dd.main)
        elif dd.main:
            LOG.warning("epoch %d iteration %d: non-finite loss, step skipped (%d in a row)", epoch + 1,
                        run.iteration + 1, guard.consecutive)
        run.schedule.step()
        run.iteration += 1
        lr = run.schedule.get_last_lr()[0]
        if not finite:
            progress.update(loss, lr, n_batch * dd.world, False)
            continue
        if run.compiled and dd.main and step == 1 and epoch == run.start_epoch:
            LOG.info("torch.compile: first training iteration took %.1f s (compilation included)",
                     time.perf_counter() - t_step)
        for k, v in {"loss": loss.detach(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v.float()
        progress.update(loss, lr, n_batch * dd.world, run.iteration % log_every == 0 or step == run.iters)
        if run.iteration % log_every == 0:
            run.folder.add_iteration(run.iteration, loss, lr)
    progress.close()
    row: dict[str, Any] = {"epoch": epoch + 1, "iteration": run.iteration, "lr": run.schedule.get_last_lr()[0]}
    for k, v in reduce_mean(sums, run.iters - guard.skipped_this_epoch, dd).items():
        row["train_loss" if k == "loss" else f"train_loss_{k}"] = v
    if guard.skipped:
        row["skipped_steps"] = guard.skipped_this_epoch
    return row


def _validate_epoch(run: _Run, epoch: int, row: dict[str, Any]) -> bool:
    """Validation scores into ``row`` (``val_*``); feeds a plateau schedule and keeps the best
    value of ``validation.metric``. Returns whether this epoch is the new best."""
    metric = run.cfg["validation"]["metric"]
    scores = validate(run.raw, run.val_vols, run.cfg, run.device, run.fast, run.dd)
    row.update({f"val_{k}": v for k, v in scores.items()})
    value = row.get(f"val_{metric}")
    if value is None and scores:
        raise ValueError(f"validation.metric {metric!r} is not computed; available: {sorted(scores)}")
    if value is None:  # validation skipped (out of memory, logged)
        return False
    if isinstance(run.schedule, PlateauSchedule):
        run.schedule.step_metric(value)
    lower_better = "hd95" in metric or "loss" in metric
    if run.best is None or (value < run.best if lower_better else value > run.best):
        run.best, run.best_epoch = float(value), epoch + 1
        return True
    return False


# ----------------------------------------------------------------------------------------------
# set-up of the loop and the checkpoint it writes


def _setup(cfg: dict[str, Any], device: torch.device, dd: DistInfo, fast: bool, folder: RunFolder,
           volumes: tuple[Sequence[Volume], Sequence[Volume]] | None, ckpt: dict[str, Any] | None,
           ckpt_path: Path | None) -> _Run:
    """Data plan, model, loss, optimiser, schedule, scaler, loader, guard and progress display;
    then the state of ``ckpt`` when resuming."""
    tr, dcfg = cfg["train"], cfg["data"]
    if volumes is not None:
        train_cache, train_idx = MemoryCache(volumes[0]), None
        val_all = list(volumes[1])
        val_vols, n_val = val_all[dd.rank::dd.world], len(val_all)
    else:
        train_cache, train_idx, val_vols, n_val = load_cases(cfg, dd)
    n_train = len(train_cache) if train_idx is None else len(train_idx)
    if not n_train:
        raise ValueError("no training cases")
    global_batch = int(dcfg["batch_size"]) * dd.world
    iters = int(tr["iterations_per_epoch"] or math.ceil(n_train / global_batch))
    dataset = patch_dataset(train_cache, dcfg["patch_size"], iters * global_batch, dcfg["foreground_fraction"],
                            dcfg["augmentation"], int(cfg["seed"]), train_idx, dcfg.get("slice_axis"),
                            int(dcfg.get("context") or 0))
    amp_dtype, use_scaler = resolve_precision(tr["precision"], device)
    model, raw, criterion, compiled = _build_model(cfg, device, dd, fast, dataset, amp_dtype)
    optimizer = build_optimizer(raw.parameters(), tr["optimizer"])
    schedule = build_schedule(optimizer, tr["schedule"], iters, int(tr["epochs"]))
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    # one loader for the whole run: persistent workers keep their processes (and the patch
    # pipeline's state) between epochs; the epoch travels with every index (EpochTagged)
    sampler = EpochTaggedBatches(EpochPlan(dataset, iters, int(dcfg["batch_size"]), dd.rank, dd.world))
    workers = int(dcfg["workers"])
    loader = torch.utils.data.DataLoader(EpochTagged(dataset), batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
                                         persistent_workers=workers > 0,
                                         prefetch_factor=int(dcfg.get("prefetch", 2)) if workers > 0 else None)
    last_good = ["none written yet"]
    guard = NonFiniteGuard(int(tr["max_nonfinite_steps"]), lambda: last_good[0],
                           sync=(lambda bad: any_rank(bad, dd)) if dd.world > 1 else None)
    run = _Run(cfg, device, dd, fast, folder, model, raw, criterion, optimizer, schedule, scaler, amp_dtype,
               compiled, iters, loader, sampler, guard, Progress(cfg["log"], dd.main), last_good, val_vols, n_val)
    if ckpt is not None:
        _resume(run, ckpt, ckpt_path)
    if dd.main:
        LOG.info("training %s: %d train / %d val cases, %d epochs x %d iterations, global batch %d, %s%s%s",
                 cfg["model"]["name"], n_train, n_val, int(tr["epochs"]), iters, global_batch, device,
                 f", {dd.world} ranks" if dd.world > 1 else "", f", {tr['precision']}" if amp_dtype else "")
    return run


def _build_model(cfg: dict[str, Any], device: torch.device, dd: DistInfo, fast: bool, dataset: Any,
                 amp_dtype: torch.dtype | None) -> tuple[nn.Module, nn.Module, nn.Module, bool]:
    """``(model, raw, loss, compiled)``: ``raw`` is the plain module, ``model`` the one the steps
    call (CPU fast path, DDP, torch.compile as configured)."""
    tr = cfg["train"]
    for name in cfg["model"]["imports"]:  # plug-in modules that register models or attention
        importlib.import_module(name)
    model = create_model(cfg["model"]["name"], **model_kwargs(cfg)).to(device)
    compiled = compile_wanted(tr.get("compile", "auto"), device)
    if fast and not compiled:  # torch.compile picks its own kernels from the plain modules
        model = fastpath.prepare_model(model, model_spatial_dims(model))
    raw = model
    ds = cfg["loss"]["deep_supervision"]
    if ds["enabled"] and ds.get("mode") == "downsample_target":
        # heads stay at their own grid and the loss resizes the target to them (nnU-Net), instead
        # of upsampling every head to the patch size (models without the switch ignore it)
        raw.ds_native_size = True
    criterion = build_training_loss(cfg["loss"], cfg["task"]["kind"]).to(device)
    if dd.world > 1:
        unused = find_unused(cfg, raw, criterion, dataset, device, fast, amp_dtype, dd)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    if compiled:  # one static shape (the patch); checkpoints and validation use the plain `raw`
        model = torch.compile(model, dynamic=False)
    if amp_dtype == torch.bfloat16 and device.type == "cpu" and dd.main and \
            not fastpath.onednn_bf16_supported():
        LOG.warning("bf16 autocast on a CPU without native bf16 convolutions (no AVX-512 BF16/AMX): "
                    "it is emulated and slower than fp32")
    return model, raw, criterion, compiled


def _resume(run: _Run, ckpt: dict[str, Any], ckpt_path: Path | None) -> None:
    """Weights, optimiser, schedule, scaler, RNG state, counters and rows of ``ckpt``."""
    run.raw.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], run.device)
    run.start_epoch, run.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
    run.best, run.best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
    run.last_good[0] = f"{ckpt_path} (epoch {run.start_epoch})"
    run.folder.load_rows(run.start_epoch)
    LOG.info("resumed from epoch %d (iteration %d)", run.start_epoch, run.iteration)


def _checkpoint(run: _Run, epoch: int, digests: list[str]) -> dict[str, Any]:
    """Everything needed to resume after epoch ``epoch`` (0-based) and to rebuild the model."""
    cfg, t, d = run.cfg, run.cfg["task"], run.cfg["data"]
    task = {"kind": t["kind"], "num_classes": int(t["num_classes"]), "in_channels": int(t["in_channels"]),
            "channel_names": list(t["channel_names"] or []),
            "label_convention": "brats" if t["kind"] == "brats-regions" else "plain",
            "patch_size": list(d["patch_size"]), "spacing": (d["preprocess"] or {}).get("target_spacing"),
            "slice_axis": d.get("slice_axis"), "context": int(d.get("context") or 0),
            "preprocess": preprocess_config(d["preprocess"]).to_json(),
            "regions": list(REGIONS) if t["kind"] == "brats-regions" else None,
            "label_names": {int(k): str(v) for k, v in (t.get("label_names") or {}).items()} or None}
    state = {k: v.detach().cpu().contiguous() for k, v in run.raw.state_dict().items()}
    return model_checkpoint(
        cfg["model"]["name"], model_kwargs(cfg), state, optimizer=run.optimizer.state_dict(),
        scheduler=run.schedule.state_dict(), scaler=run.scaler.state_dict() if run.scaler is not None else {},
        epoch=epoch + 1, iteration=run.iteration, rng=rng_state(run.device),
        data_state={"plan": "epoch-plan", "seed": int(cfg["seed"]), "next_epoch": epoch + 1}, config=cfg,
        task=task, best_metric=run.best, best_epoch=run.best_epoch, metric="val_" + cfg["validation"]["metric"],
        world_size=run.dd.world, rank_weight_digests=digests)
