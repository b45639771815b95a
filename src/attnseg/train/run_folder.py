"""The run folder and what training prints: ``config.yaml``, ``env.json``, ``metrics.csv``,
``log.txt``, TensorBoard events, ``curves/`` (drawn by :mod:`attnseg.report.figures`),
``checkpoints/``; and the per-iteration progress (a tqdm bar or periodic log lines).

Rank 0 alone writes; on other ranks a :class:`RunFolder` only keeps the rows in memory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from attnseg.report.figures import plot_loss, plot_validation
from attnseg.report.rundata import read_csv
from attnseg.runtime.optional import MissingExtraError, require
from attnseg.train.checkpoint import save_checkpoint
from attnseg.train.config import dump_yaml

LOG = logging.getLogger("attnseg.train")


def resolve_resume(resume: str | os.PathLike | bool | None, run_dir: Path) -> Path | None:
    """Checkpoint to resume from: ``True``/``"auto"``/``"last"`` → ``run_dir``'s ``last.pt``, a
    run folder → its ``last.pt``, a file → itself; ``None`` when not resuming."""
    if resume in (None, False, ""):
        return None
    if resume is True or str(resume) in ("auto", "last"):
        return run_dir / "checkpoints" / "last.pt"
    p = Path(resume)
    return p / "checkpoints" / "last.pt" if p.is_dir() else p


def format_row(row: dict[str, Any]) -> str:
    """One log line of an epoch's row: ``key value`` pairs, floats to 4 significant digits."""
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


class RunFolder:
    """Files of a run (rank 0 only): config, env, metrics.csv, TensorBoard, curves, log, checkpoints."""

    def __init__(self, path: Path, enabled: bool, cfg: dict[str, Any]) -> None:
        self.path, self.enabled = path, enabled
        self.curves = bool(cfg["log"]["curves"])
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        self._handler: logging.Handler | None = None
        self._stream: logging.Handler | None = None
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

    def start(self, cfg: dict[str, Any], env: dict[str, Any]) -> None:
        """Write ``config.yaml`` and ``env.json``; remove temporary files left by a process killed
        while writing a checkpoint."""
        for f in (self.path / "checkpoints").glob(".*.tmp"):
            f.unlink(missing_ok=True)
        (self.path / "config.yaml").write_text(dump_yaml(cfg))
        (self.path / "env.json").write_text(json.dumps(env, indent=2) + "\n")

    def load_rows(self, upto_epoch: int) -> None:
        """Rows of a previous run, dropping epochs after the checkpoint we resume from (empty
        cells left out, as in the rows of an uninterrupted run)."""
        f = self.path / "metrics.csv"
        if not f.is_file():
            return
        self.rows = [{k: v for k, v in r.items() if v is not None} for r in read_csv(f) if r["epoch"] <= upto_epoch]

    def add_row(self, row: dict[str, Any]) -> None:
        """Append an epoch's row; rewrite ``metrics.csv`` (atomically) and add it to TensorBoard."""
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

    def add_iteration(self, iteration: int, loss: torch.Tensor, lr: float) -> None:
        """Per-iteration loss and learning rate into TensorBoard (when it is on)."""
        if self.tb is not None:
            self.tb.add_scalar("train/loss_iter", loss.item(), iteration)
            self.tb.add_scalar("train/lr", lr, iteration)

    def save_checkpoints(self, ck: dict[str, Any], best: bool) -> str:
        """Write ``checkpoints/last.pt`` (and ``best.pt`` when ``best``); returns how to name
        ``last.pt`` in messages (path and epoch)."""
        last = self.path / "checkpoints" / "last.pt"
        save_checkpoint(ck, last)
        if best:
            save_checkpoint(ck, self.path / "checkpoints" / "best.pt")
        return f"{last} (epoch {ck['epoch']})"

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

    def stop_echo(self) -> None:
        """Stop printing log lines on stdout (``log.txt`` still gets them)."""
        if self._stream is not None:
            LOG.removeHandler(self._stream)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self._handler is not None:
            for h in (self._handler, self._stream):
                LOG.removeHandler(h)
                h.close()
            self._handler = None


class Progress:
    """tqdm bar on a terminal; plain periodic lines otherwise (rank 0 only)."""

    def __init__(self, log_cfg: dict[str, Any], enabled: bool) -> None:
        mode = log_cfg.get("progress", "auto")
        self.enabled = enabled
        self.bar_mode = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.interval = max(int(log_cfg.get("interval", 10)), 1)
        self.bar = None

    def start(self, epoch: int, epochs: int, iters: int) -> None:
        """A new epoch (0-based ``epoch`` of ``epochs``) of ``iters`` iterations."""
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
