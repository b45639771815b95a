"""The training loop: ``run_training(config) -> RunResult``.

One function drives single-process and ``torchrun`` (DistributedDataParallel) training alike:
data plan, model, loss, optimiser and per-iteration schedule, mixed precision, validation on
whole volumes, checkpoints that resume exactly, and the run folder (rank 0 writes it alone).
See docs/training.md for the configuration and the guarantees.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from attnseg import __version__
from attnseg.data.cache import CaseCache
from attnseg.data.dataset import worker_init_fn
from attnseg.data.readers import find_cases
from attnseg.infer import fastpath
from attnseg.infer.slicewise import slice_inferer
from attnseg.infer.sliding_window import SlidingWindowInferer
from attnseg.metrics.brats import BRATS_MAX_HD95
from attnseg.metrics.core import hd95
from attnseg.models import create_model
from attnseg.report.figures import plot_loss, plot_validation
from attnseg.runtime.cpu import enable_cpu_fastpaths
from attnseg.runtime.errors import FaultError
from attnseg.runtime.lock import FolderLock
from attnseg.runtime.memory import is_out_of_memory, out_of_memory_message
from attnseg.runtime.optional import MissingExtraError, require
from attnseg.train.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from attnseg.train.config import dump_yaml, resolve_config
from attnseg.train.data import (
    EpochPlan,
    MemoryCache,
    Volume,
    cached_volume,
    model_kwargs,
    patch_dataset,
    preprocess_config,
    region_target,
    split_cases,
)
from attnseg.train.distributed import (
    DistInfo,
    EpochTagged,
    EpochTaggedBatches,
    all_digests,
    all_reduce_sum,
    any_rank,
    configure_determinism,
    deterministic_for,
    inference_precision,
    pick_device,
    resolve_precision,
    restore_determinism,
    rng_state,
    set_rng_state,
    setup_distributed,
    unused_parameters,
)
from attnseg.train.guard import NonFiniteGuard
from attnseg.train.losses import build_training_loss
from attnseg.train.schedules import PlateauSchedule, build_optimizer, build_schedule

LOG = logging.getLogger("attnseg.train")
REGIONS = ("ET", "TC", "WT")


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
# process set-up


_Dist = DistInfo  # the trainer's name for it


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _env_info(device: torch.device, world: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "attnseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "host": socket.gethostname(),
        "device": str(device), "world_size": world, "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda, "argv": sys.argv,
    }

    for mod in ("monai", "nibabel", "SimpleITK"):
        try:  # metadata only: importing MONAI would take seconds
            info[mod] = version(mod)
        except PackageNotFoundError:
            info[mod] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        here = Path(__file__).resolve().parent
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                            timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


# ----------------------------------------------------------------------------------------------
# validation


def _dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Dice of two bool masks; 1 when both are empty (BraTS legacy rule)."""
    ps, rs = int(pred.sum()), int(ref.sum())
    if ps + rs == 0:
        return 1.0
    return 2.0 * int((pred & ref).sum()) / (ps + rs)


def _hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None) -> float:
    """HD95 (:func:`attnseg.metrics.core.hd95`, MONAI definition) with the BraTS legacy rules:
    both empty → 0, one empty or infinite → 373.13."""
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return BRATS_MAX_HD95
    return float(min(hd95(pred, ref, spacing=spacing), BRATS_MAX_HD95))


def validation_scores(output: torch.Tensor, label: np.ndarray, kind: str, activated: str | None,
                      hd95: bool = False, spacing: Sequence[float] | None = None,
                      label_names: dict[Any, str] | None = None) -> dict[str, float]:
    """Per-case scores from whole-volume model output ``(1, C, *sp)`` and the class map ``label``.

    ``brats-regions``: Dice (and HD95) of ET, TC, WT from the per-channel sigmoid ≥ 0.5 (the
    last three channels are ET, TC, WT); ``classes``: per foreground class from the argmax,
    keyed by ``label_names[class]`` (spaces → ``_``) where given, else the class number.
    ``activated`` says whether the model already applied ``"sigmoid"``/``"softmax"``.
    """
    out = output[0].float()
    lab = torch.from_numpy(np.asarray(label).astype(np.int64))
    scores: dict[str, float] = {}
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
    for i, name in enumerate(names):
        scores[f"dice_{name}"] = _dice(pred[i], ref[i])
        if hd95:
            scores[f"hd95_{name}"] = _hd95(pred[i].numpy(), ref[i].numpy(), spacing)
    return scores


def class_key(value: int, label_names: dict[Any, str] | None) -> str:
    """Column name of class ``value``: its label name (whitespace → ``_``) or the number."""
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    return "_".join(names[value].split()) if value in names else str(value)


# ----------------------------------------------------------------------------------------------
# run folder


class RunFolder:
    """Files of a run (rank 0 only): config, env, metrics.csv, TensorBoard, curves, log."""

    def __init__(self, path: Path, enabled: bool, cfg: dict[str, Any]) -> None:
        self.path, self.enabled = path, enabled
        self.curves = bool(cfg["log"]["curves"])
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        self._handler: logging.Handler | None = None
        if not enabled:
            return
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(path / "log.txt")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        LOG.addHandler(self._handler)
        self._stream = logging.StreamHandler(sys.stdout)
        self._stream.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(self._stream)
        LOG.propagate = False
        if cfg["log"]["tensorboard"]:
            try:  # optional: the [tensorboard] extra
                tensorboard = require("torch.utils.tensorboard", feature="event files")
                self.tb = tensorboard.SummaryWriter(str(path / "tensorboard"))
            except MissingExtraError as exc:
                LOG.warning("%s; training goes on without event files", exc)

    def load_rows(self, upto_epoch: int) -> None:
        """Rows of a previous run, dropping epochs after the checkpoint we resume from."""
        f = self.path / "metrics.csv"
        if not f.is_file():
            return
        with f.open() as fh:
            rows = list(csv.DictReader(fh))
        self.rows = [{k: _num(v) for k, v in r.items()} for r in rows if int(r["epoch"]) <= upto_epoch]

    def add_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        tmp = self.path / ".metrics.csv.tmp"
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path / "metrics.csv")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "iteration") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k.replace("val_", "val/").replace("train_", "train/"), v, row["iteration"])
            self.tb.flush()

    def plot_curves(self) -> None:
        """``curves/loss.png`` and ``curves/val_dice.png``, drawn by the report's figures."""
        if not self.enabled or not self.rows or not self.curves:
            return
        try:
            plot_loss(self.rows, self.path / "curves" / "loss.png")
            plot_validation(self.rows, self.path / "curves" / "val_dice.png", "dice")
        except MissingExtraError as exc:  # optional: the [report] extra
            LOG.warning("%s; training goes on without curves", exc)
            self.curves = False  # warn once

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self._handler is not None:
            for h in (self._handler, self._stream):
                LOG.removeHandler(h)
                h.close()
            self._handler = None


def _num(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


# ----------------------------------------------------------------------------------------------
# the run


def _as_dict(out: Any) -> dict[str, torch.Tensor]:
    return out if isinstance(out, dict) else {"out": out}


def _stale_temp_files(folder: Path) -> None:
    """Remove temporary files left by a process killed while writing a checkpoint."""
    for f in folder.glob(".*.tmp"):
        f.unlink(missing_ok=True)


def _import_plugins(names: Sequence[str]) -> None:
    for name in names:
        importlib.import_module(name)


def _resolve_resume(resume: str | os.PathLike | bool | None, run_dir: Path) -> Path | None:
    if resume in (None, False, ""):
        return None
    if resume is True or str(resume) in ("auto", "last"):
        return run_dir / "checkpoints" / "last.pt"
    p = Path(resume)
    return p / "checkpoints" / "last.pt" if p.is_dir() else p


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


def _run(cfg: dict[str, Any], device: torch.device, dd: _Dist, resume: str | os.PathLike | bool | None,
         volumes: tuple[Sequence[Volume], Sequence[Volume]] | None) -> RunResult:
    tr = cfg["train"]
    _seed_everything(int(cfg["seed"]))
    fast = bool(tr["fastpath"]) and device.type == "cpu"
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


def _run_locked(cfg: dict[str, Any], device: torch.device, dd: _Dist, resume: str | os.PathLike | bool | None,
                volumes: tuple[Sequence[Volume], Sequence[Volume]] | None, run_dir: Path, new_folder: bool,
                fast: bool, lock: FolderLock) -> RunResult:
    ckpt_path = _resolve_resume(resume, run_dir)
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
        _stale_temp_files(run_dir / "checkpoints")
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        (run_dir / "env.json").write_text(json.dumps(_env_info(device, dd.world), indent=2) + "\n")
    try:
        return _train(cfg, device, dd, fast, folder, ckpt, volumes, ckpt_path)
    except BaseException as exc:
        if dd.main:
            if isinstance(exc, KeyboardInterrupt):
                LOG.info("interrupted by the user (Ctrl-C)")
            else:  # into log.txt; the command line prints the error itself
                LOG.removeHandler(getattr(folder, "_stream", None))
                LOG.error("training failed: %s: %s", type(exc).__name__, exc)
        folder.close()
        # a run that failed before its first checkpoint leaves nothing behind (no empty run folder)
        if dd.main and new_folder and not isinstance(exc, KeyboardInterrupt) and \
                not any((run_dir / "checkpoints").glob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        folder.close()


def _spatial_dims(model: nn.Module) -> int:
    return 3 if any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in model.modules()) else 2


def _train(cfg: dict[str, Any], device: torch.device, dd: _Dist, fast: bool, folder: RunFolder,
           ckpt: dict[str, Any] | None, volumes: tuple[Sequence[Volume], Sequence[Volume]] | None,
           ckpt_path: Path | None = None) -> RunResult:
    tr, dcfg, vcfg, task = cfg["train"], cfg["data"], cfg["validation"], cfg["task"]
    kind = task["kind"]
    # ---- data
    if volumes is not None:
        train_cache, train_idx = MemoryCache(volumes[0]), None
        val_all = list(volumes[1])
        val_vols, n_val = val_all[dd.rank::dd.world], len(val_all)
    else:
        train_cache, train_idx, val_vols, n_val = _load_data(cfg, dd)
    n_train = len(train_cache) if train_idx is None else len(train_idx)
    if not n_train:
        raise ValueError("no training cases")
    global_batch = int(dcfg["batch_size"]) * dd.world
    iters = tr["iterations_per_epoch"] or math.ceil(n_train / global_batch)
    iters, epochs = int(iters), int(tr["epochs"])
    dataset = patch_dataset(train_cache, dcfg["patch_size"], iters * global_batch, dcfg["foreground_fraction"],
                            dcfg["augmentation"], int(cfg["seed"]), train_idx, dcfg.get("slice_axis"),
                            int(dcfg.get("context") or 0))
    plan = EpochPlan(dataset, iters, int(dcfg["batch_size"]), dd.rank, dd.world)
    # ---- model

    _import_plugins(cfg["model"]["imports"])

    model = create_model(cfg["model"]["name"], **model_kwargs(cfg)).to(device)
    compiled = _compile_wanted(tr.get("compile", "auto"), device)
    if fast and not compiled:  # torch.compile picks its own kernels from the plain modules
        model = fastpath.prepare_model(model, _spatial_dims(model))
    raw = model
    ds = cfg["loss"]["deep_supervision"]
    if ds["enabled"] and ds.get("mode") == "downsample_target":
        # heads stay at their own grid and the loss resizes the target to them (nnU-Net), instead
        # of upsampling every head to the patch size (models without the switch ignore it)
        raw.ds_native_size = True
    criterion = build_training_loss(cfg["loss"], kind).to(device)
    amp_dtype, use_scaler = resolve_precision(tr["precision"], device)
    if dd.world > 1:
        unused = _find_unused(cfg, raw, criterion, dataset, device, fast, amp_dtype, dd)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    if compiled:  # one static shape (the patch); checkpoints and validation use the plain `raw`
        model = torch.compile(model, dynamic=False)
    optimizer = build_optimizer(raw.parameters(), tr["optimizer"])
    schedule = build_schedule(optimizer, tr["schedule"], iters, epochs)
    if amp_dtype == torch.bfloat16 and device.type == "cpu" and dd.main and \
            not fastpath.onednn_bf16_supported():
        LOG.warning("bf16 autocast on a CPU without native bf16 convolutions (no AVX-512 BF16/AMX): "
                    "it is emulated and slower than fp32")
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    start_epoch, iteration, best, best_epoch = 0, 0, None, None
    if ckpt is not None:
        state = ckpt["model"]
        raw.load_state_dict(state)
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], device)
        start_epoch, iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        best, best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
        folder.load_rows(start_epoch)
        LOG.info("resumed from epoch %d (iteration %d)", start_epoch, iteration)
    metric_key = "val_" + vcfg["metric"]
    lower_better = "hd95" in metric_key or "loss" in metric_key
    stop_after = tr["stop_after_epochs"]
    end_epoch = epochs if stop_after is None else min(epochs, start_epoch + int(stop_after))
    if dd.main:
        LOG.info("training %s: %d train / %d val cases, %d epochs x %d iterations, global batch %d, %s%s%s",
                 cfg["model"]["name"], n_train, n_val, epochs, iters, global_batch, device,
                 f", {dd.world} ranks" if dd.world > 1 else "", f", {tr['precision']}" if amp_dtype else "")
    progress = _Progress(cfg["log"], dd.main)
    digests: list[str] = []
    budget_s = None if tr.get("max_minutes") is None else float(tr["max_minutes"]) * 60.0
    t_start = time.perf_counter()
    # one loader for the whole run: persistent workers keep their processes (and the patch
    # pipeline's state) between epochs; the epoch travels with every index (EpochTagged)
    batches = EpochTaggedBatches(plan)
    workers = int(dcfg["workers"])
    loader = torch.utils.data.DataLoader(EpochTagged(dataset), batch_sampler=batches, num_workers=workers,
                                         pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
                                         persistent_workers=workers > 0,
                                         prefetch_factor=int(dcfg.get("prefetch", 2)) if workers > 0 else None)
    log_every = max(int(cfg["log"]["interval"]), 1)
    # last checkpoint written from a good state (named when non-finite steps stop the run)
    last_good = [f"{ckpt_path} (epoch {start_epoch})" if ckpt_path is not None else "none written yet"]
    guard = NonFiniteGuard(int(tr["max_nonfinite_steps"]), lambda: last_good[0],
                           sync=(lambda bad: any_rank(bad, dd)) if dd.world > 1 else None)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        batches.set_epoch(epoch)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        guard.new_epoch()
        progress.start(epoch, epochs, iters)
        for step, batch in _batches(loader, epoch, iteration, last_good):
            t_step = time.perf_counter()
            loss, parts, n_batch = _forward_loss(model, criterion, batch, device, fast, amp_dtype, kind)
            # a NaN/Inf loss is skipped (no backward, no optimizer or scaler step) and counted; the guard
            # stops the run after train.max_nonfinite_steps in a row (one host sync per step)
            if not guard.loss_ok(loss, epoch=epoch + 1, iteration=iteration + 1):
                if dd.main:
                    LOG.warning("epoch %d iteration %d: non-finite loss, step skipped (%d in a row)", epoch + 1,
                                iteration + 1, guard.consecutive)
                schedule.step()
                iteration += 1
                progress.update(loss, schedule.get_last_lr()[0], n_batch * dd.world, False)
                continue
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                _clip(raw, tr["grad_clip"])
                scale = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                # the scaler skipped the step when its scale went down (Inf/NaN gradients)
                guard.scaler_step(scaler.get_scale() < scale, epoch=epoch + 1, iteration=iteration + 1)
            else:
                loss.backward()
                norm = _clip(raw, tr["grad_clip"])
                if guard.grads_ok(raw.parameters(), epoch=epoch + 1, iteration=iteration + 1, total_norm=norm):
                    optimizer.step()
                elif dd.main:
                    LOG.warning("epoch %d iteration %d: non-finite gradient, step skipped", epoch + 1,
                                iteration + 1)
            schedule.step()
            iteration += 1
            if compiled and dd.main and step == 1 and epoch == start_epoch:
                LOG.info("torch.compile: first training iteration took %.1f s (compilation included)",
                         time.perf_counter() - t_step)
            parts = {"loss": loss.detach(), **parts}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.float()
            at_log = iteration % log_every == 0 or step == iters
            progress.update(loss, schedule.get_last_lr()[0], n_batch * dd.world, at_log)
            if folder.tb is not None and iteration % log_every == 0:
                folder.tb.add_scalar("train/loss_iter", loss.item(), iteration)
                folder.tb.add_scalar("train/lr", schedule.get_last_lr()[0], iteration)
        progress.close()
        row: dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration, "lr": schedule.get_last_lr()[0]}
        for k, v in _reduce_mean(sums, iters - guard.skipped_this_epoch, dd).items():
            row["train_loss" if k == "loss" else f"train_loss_{k}"] = v
        if guard.skipped:
            row["skipped_steps"] = guard.skipped_this_epoch
        # a wall-clock budget ends the run after this epoch (validated and checkpointed like the last one)
        out_of_time = budget_s is not None and any_rank(time.perf_counter() - t_start >= budget_s, dd)
        if out_of_time:
            end_epoch = epoch + 1
            if dd.main:
                LOG.info("time budget of %.1f min used up after epoch %d", budget_s / 60, epoch + 1)
        do_val = int(vcfg["interval"]) > 0 and ((epoch + 1) % int(vcfg["interval"]) == 0 or epoch + 1 == epochs
                                                or out_of_time)
        improved = False
        if do_val and n_val:
            validate = _validate_patches if vcfg.get("mode", "full") == "patches" else _validate
            scores = validate(raw, val_vols, cfg, device, fast, dd)
            row.update({f"val_{k}": v for k, v in scores.items()})
            value = row.get(metric_key)
            if value is None and scores:
                raise ValueError(f"validation.metric {vcfg['metric']!r} is not computed; "
                                 f"available: {sorted(k[4:] for k in scores)}")
            if value is not None:  # None: validation skipped (out of memory, logged)
                if isinstance(schedule, PlateauSchedule):
                    schedule.step_metric(value)
                if best is None or (value < best if lower_better else value > best):
                    best, best_epoch, improved = float(value), epoch + 1, True
        row["time_s"] = round(time.perf_counter() - t0, 3)
        folder.add_row(row)
        if dd.main:
            LOG.info(" ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
        last_epoch = epoch + 1 == end_epoch
        digests = all_digests(raw, dd) if last_epoch else []
        if (epoch + 1) % max(int(tr["checkpoint_interval"]), 1) == 0 or do_val or last_epoch:
            if dd.main:
                ck = model_checkpoint(
                    cfg["model"]["name"], model_kwargs(cfg), _cpu_state(raw),
                    optimizer=optimizer.state_dict(), scheduler=schedule.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else {}, epoch=epoch + 1, iteration=iteration,
                    rng=rng_state(device), data_state={"plan": "epoch-plan", "seed": int(cfg["seed"]),
                                                 "next_epoch": epoch + 1},
                    config=cfg, task=_task_dict(cfg), best_metric=best, best_epoch=best_epoch,
                    metric=metric_key, world_size=dd.world, rank_weight_digests=digests)
                save_checkpoint(ck, folder.path / "checkpoints" / "last.pt")
                last_good[0] = f"{folder.path / 'checkpoints' / 'last.pt'} (epoch {epoch + 1})"
                if improved:
                    save_checkpoint(ck, folder.path / "checkpoints" / "best.pt")
            if do_val:
                folder.plot_curves()
        if out_of_time:
            break
    if not digests:  # nothing left to train (resumed a finished run)
        digests = all_digests(raw, dd)
    if dd.main and len(set(digests)) > 1:
        LOG.warning("weights differ between ranks: %s", digests)
    progress.finish()
    return RunResult(folder.path, best, best_epoch, end_epoch, iteration, list(folder.rows), digests)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _task_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    t, d = cfg["task"], cfg["data"]
    return {"kind": t["kind"], "num_classes": int(t["num_classes"]), "in_channels": int(t["in_channels"]),
            "channel_names": list(t["channel_names"] or []),
            "label_convention": "brats" if t["kind"] == "brats-regions" else "plain",
            "patch_size": list(d["patch_size"]), "spacing": (d["preprocess"] or {}).get("target_spacing"),
            "slice_axis": d.get("slice_axis"), "context": int(d.get("context") or 0),
            "preprocess": preprocess_config(d["preprocess"]).to_json(),
            "regions": list(REGIONS) if t["kind"] == "brats-regions" else None,
            "label_names": {int(k): str(v) for k, v in (t.get("label_names") or {}).items()} or None}


def _compile_wanted(spec: Any, device: torch.device) -> bool:
    """``train.compile``: true, false, or auto (on CUDA only; on CPU the compilation costs far
    more than it saves in a short run, see docs/benchmarks.md)."""
    return device.type == "cuda" if spec == "auto" else bool(spec)


def _clip(model: nn.Module, max_norm: float | None) -> torch.Tensor | None:
    """Clip the global gradient norm when ``max_norm`` is set; returns the norm before clipping."""
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), float(max_norm))
    return None


def _batches(loader: Any, epoch: int, iteration: int, last_good: list[str]) -> Any:
    """``enumerate(loader, 1)``, with a DataLoader worker that died (killed by the OOM killer or a
    signal) turned into one line naming where training stopped and what to resume from."""
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


def _forward_loss(model: nn.Module, criterion: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                  fast: bool, amp_dtype: torch.dtype | None,
                  kind: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Forward (under autocast when asked) and loss (fp32) of one batch: ``(loss, parts, batch size)``."""
    x = batch["image"].to(device, non_blocking=True)
    lab = batch["label"].to(device, non_blocking=True)
    if fast:
        x = fastpath.prepare_input(x)
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with ctx:
        outputs = _as_dict(model(x))
    out_ch = outputs["out"].shape[1]
    target = region_target(lab, out_ch) if kind == "brats-regions" else lab
    wt = (lab > 0).float().unsqueeze(1)
    loss, parts = criterion(outputs, target, wt)
    return loss, parts, int(x.shape[0])


def _find_unused(cfg: dict[str, Any], model: nn.Module, criterion: nn.Module, dataset: Any, device: torch.device,
                 fast: bool, amp_dtype: torch.dtype | None, dd: _Dist) -> bool:
    """DDP's ``find_unused_parameters``: ``distributed.find_unused_parameters`` when set, else
    (``auto``) whether one probe step (first training sample, RNG and buffers put back) leaves
    a parameter without gradient. The flag costs a graph traversal every iteration."""
    spec = cfg["distributed"].get("find_unused_parameters", "auto")
    if spec != "auto":
        return bool(spec)
    batch = torch.utils.data.default_collate([dataset[0]])
    names = unused_parameters(model, lambda: _forward_loss(model, criterion, batch, device, fast, amp_dtype,
                                                           cfg["task"]["kind"])[0])
    found = any_rank(bool(names), dd)
    if found and dd.main:
        LOG.info("%d parameter tensor(s) get no gradient (%s%s): DDP runs with find_unused_parameters",
                 len(names), ", ".join(names[:3]), ", ..." if len(names) > 3 else "")
    return found


def _reduce_mean(sums: dict[str, torch.Tensor], count: int, dd: _Dist) -> dict[str, float]:
    """Mean over iterations and ranks of per-iteration sums (one all-reduce on the backend's device)."""
    if not sums:
        return {}
    keys = sorted(sums)
    vec = torch.stack([torch.as_tensor(sums[k]).detach().to(dd.reduce_device, torch.float64).reshape(())
                       for k in keys])
    vec = all_reduce_sum(vec, dd)
    return {k: float(v) / (count * dd.world) for k, v in zip(keys, vec)}


@torch.no_grad()
def _validate(model: nn.Module, vols: Sequence[Volume], cfg: dict[str, Any], device: torch.device, fast: bool,
              dd: _Dist) -> dict[str, float]:
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
    dice = [v for k, v in scores.items() if k.startswith("dice_")]
    scores["dice_mean"] = sum(dice) / len(dice)
    hd = [v for k, v in scores.items() if k.startswith("hd95_")]
    if hd:
        scores["hd95_mean"] = sum(hd) / len(hd)
    return scores


@torch.no_grad()
def _validate_patches(model: nn.Module, vols: Sequence[Volume], cfg: dict[str, Any], device: torch.device,
                      fast: bool, dd: _Dist) -> dict[str, float]:
    """Cheap validation (``validation.mode: patches``, as nnU-Net's per-epoch pseudo Dice):
    ``validation.patches`` training-size patches (foreground-centred at
    ``data.foreground_fraction``, no augmentation, the same patches at every validation),
    split over the ranks; Dice per region/class from true/false positives and false negatives
    summed over all patches (``2TP / (2TP + FP + FN)``, 1 when both are empty). Cheaper than
    whole volumes but not comparable with them (patches miss most of the background)."""
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
                out = _as_dict(model(x))["out"].float()
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
    dice = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(denom))
    scores = {f"dice_{name}": float(d) for name, d in zip(names, dice)}
    scores["dice_mean"] = float(dice.mean())
    return scores


def _load_data(cfg: dict[str, Any], dd: _Dist) -> tuple[Any, list[int], list[Volume], int]:
    """Training cache + indices, this rank's validation volumes, number of validation cases."""
    d, task = cfg["data"], cfg["task"]
    if not d["root"]:
        raise ValueError("data.root is not set (use --dataroot or --set data.root=DIR)")
    kw = {"channels": list(task["channel_names"])} if task.get("channel_names") else {}
    pcfg = preprocess_config(d["preprocess"])

    def cache_for(root: str) -> Any:
        tag = hashlib.sha1(json.dumps(pcfg.to_json(), sort_keys=True).encode()).hexdigest()[:8]
        where = Path(d["cache_dir"]) if d["cache_dir"] else Path(cfg["output_dir"]) / ".cache"
        cache = CaseCache(find_cases(root, layout=d["layout"], **kw), where / f"{Path(root).resolve().name}-{tag}",
                          pcfg)
        if dd.main:
            cache.prepare(workers=max(int(d["workers"]), 1))
            for cid, why in cache.rebuilt.items():  # damaged or stale entries are never trained on
                LOG.warning("cache entry of %s rebuilt: %s", cid, why)
        if dd.world > 1:
            dist.barrier()  # the other ranks open what rank 0 built
        return cache

    cache = cache_for(d["root"])
    if task["kind"] == "classes":  # a class beyond the outputs would fail deep inside the loss
        k = int(task["num_classes"])
        for i in range(len(cache)):
            top = cache[i].fg_classes()
            if len(top) and int(top.max()) >= k:
                raise ValueError(f"{cache.cases[i].label_path}: label value {int(top.max())} but the model has "
                                 f"{k} output classes (task.num_classes); give --out_channels "
                                 f"{int(top.max()) + 1} or train without --config to plan from the data")
    names = cache.cases[0].extra.get("label_names") if cache.cases else None
    if not task.get("label_names") and names and task["kind"] == "classes":
        task["label_names"] = {int(k): str(v) for k, v in names.items()}  # dataset.json's names
    ids = [c.case_id for c in cache.cases]
    if d["train_cases"] is not None:
        train_ids, val_ids = list(d["train_cases"]), list(d["val_cases"] or [])
    elif d["val_root"]:
        train_ids, val_ids = ids, []
    else:
        train_ids, val_ids = split_cases(ids, float(d["val_fraction"]), int(d["split_seed"]))
        if d["use_all_for_training"]:
            train_ids = ids
    train_idx = [cache.index_of(i) for i in train_ids]
    val_cache = cache
    if d["val_root"]:
        val_cache = cache_for(d["val_root"])
        val_ids = val_ids or [c.case_id for c in val_cache.cases]
    shard = sorted(val_ids)[dd.rank::dd.world]
    return cache, train_idx, [cached_volume(val_cache[val_cache.index_of(i)]) for i in shard], len(val_ids)


class _Progress:
    """tqdm bar on a terminal; plain periodic lines otherwise (rank 0 only)."""

    def __init__(self, log_cfg: dict[str, Any], enabled: bool) -> None:
        mode = log_cfg.get("progress", "auto")
        self.enabled = enabled
        self.bar_mode = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.interval = max(int(log_cfg.get("interval", 10)), 1)
        self.bar = None

    def start(self, epoch: int, epochs: int, iters: int) -> None:
        self.epoch, self.epochs, self.iters, self.i = epoch, epochs, iters, 0
        self.t0, self.samples = time.perf_counter(), 0
        if self.bar_mode:
            self.bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)

    def update(self, loss: torch.Tensor | float, lr: float, samples: int, at_log: bool = True) -> None:
        """One iteration done; ``loss`` is read (a host sync on a GPU) only when ``at_log``."""
        if not self.enabled:
            return
        self.i += 1
        self.samples += samples
        if not at_log:
            if self.bar is not None:
                self.bar.update(1)
            return
        rate = self.samples / max(time.perf_counter() - self.t0, 1e-9)
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.2f}")
            self.bar.update(1)
        else:
            LOG.info("epoch %d/%d it %d/%d loss %.4f lr %.3e %.2f samples/s", self.epoch + 1, self.epochs, self.i,
                     self.iters, value, lr, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self) -> None:
        self.close()
