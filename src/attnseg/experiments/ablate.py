"""Backbone × attention ablation (``attnseg ablate``): the model-zoo table of the seed paper.

Every cell (backbone, attention, seed) trains the same config on the same data split under
the same budget, is evaluated the same way, and leaves ``OUT/cells/<cell>.json``; finished
cells are skipped on the next call, so an interrupted ablation resumes where it stopped.
The table (``OUT/ablation.md``) has one row per backbone × attention with the mean over
seeds of the Dice per region/class, their mean, HD95, parameters and training time.

The config is a training config (see docs/training.md) with an optional ``ablate`` section::

    ablate:
      backbone_kwargs: {unet: {features: [8, 16, 32, 64]}, vnet: {...}}   # per backbone
      attention_kwargs: {pam: {form: adaptive}}                            # per attention
      attention_at: [encoder, decoder]                                     # sites (default: backbone's)
      variants: {unet-2.5d-k1: {model: unet, data: {slice_axis: axial, context: 1}}}  # extra 2-D rows

2-D and 2.5-D rows sit next to the 3-D backbones: a *variant* name (built in: :data:`VARIANTS`,
or the config's ``ablate.variants``) is a registered 2-D capable model plus data settings. It
trains on slices of the same volumes, with the in-plane part of the 3-D ``data.patch_size``,
and validates on the same whole volumes (slice by slice), so its Dice is comparable. Its
kwargs come from ``backbone_kwargs[<variant>]``, else ``backbone_kwargs[<model>]`` (without
``spatial_dims``: the variant makes the model 2-D).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# 2-D / 2.5-D rows: variant name -> registered model and the data settings that make it 2-D
VARIANTS: dict[str, dict[str, Any]] = {
    "unet-2d": {"model": "unet", "data": {"slice_axis": "axial"}},
    "unet-2.5d": {"model": "unet", "data": {"slice_axis": "axial", "context": 2}},
    "deeplabv3plus-2d": {"model": "deeplabv3plus", "data": {"slice_axis": "axial"}},
}


def variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Built-in :data:`VARIANTS` updated with the config's ``ablate.variants``."""
    extra = ((config.get("ablate") or {}).get("variants")) or {}
    for name, v in extra.items():
        if not isinstance(v, dict) or "model" not in v:
            raise ValueError(f"ablate.variants.{name}: needs a 'model' (a registered model name) and optional 'data'")
    return {**VARIANTS, **extra}


def backbone_model(config: dict[str, Any], backbone: str) -> str:
    """The registered model a backbone (or 2-D variant) name of the ablation trains."""
    v = variants(config).get(backbone)
    return str(v["model"]) if v else backbone


@dataclass(frozen=True)
class Cell:
    backbone: str
    attention: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.backbone}__{self.attention}__s{self.seed}"


def _log(msg: str) -> None:
    print(f"[ablate {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cell_config(base: dict[str, Any], cell: Cell, out_dir: Path, budget_minutes: float | None) -> dict[str, Any]:
    """The training config of one cell: the base config with the backbone, its attention and seed."""
    cfg = copy.deepcopy(base)
    variant = variants(cfg).get(cell.backbone)
    ab = cfg.pop("ablate", {}) or {}
    model = cfg.setdefault("model", {})
    kwargs = dict(model.get("kwargs") or {})
    per_backbone = ab.get("backbone_kwargs") or {}
    if variant is not None:  # a 2-D row: the model's kwargs without its 3-D setting, and slices
        kwargs.update(per_backbone.get(cell.backbone, per_backbone.get(variant["model"], {})))
        kwargs.pop("spatial_dims", None)
        data = cfg.setdefault("data", {})
        data.update(copy.deepcopy(variant.get("data") or {}))
        data.setdefault("slice_axis", "axial")
    else:
        kwargs.update(per_backbone.get(cell.backbone, {}))
    if cell.attention != "none":
        kwargs["attention"] = cell.attention
        att_kw = (ab.get("attention_kwargs") or {}).get(cell.attention)
        if att_kw:
            kwargs["attention_kwargs"] = dict(att_kw)
        if ab.get("attention_at"):
            kwargs["attention_at"] = list(ab["attention_at"])
    model["name"], model["kwargs"] = (variant["model"] if variant else cell.backbone), kwargs
    cfg["seed"] = cell.seed
    cfg["name"] = cell.name
    cfg["output_dir"] = str(out_dir / "runs")
    if budget_minutes is not None:
        cfg.setdefault("train", {})["max_minutes"] = float(budget_minutes)
    return cfg


def _last_validation(run_dir: Path) -> dict[str, float]:
    """Validation scores of the best epoch (by ``val_dice_mean``) from ``metrics.csv``."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no metrics")
    with path.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_dice_mean") not in (None, "", "nan")]
    if not rows:
        raise ValueError(f"{path}: no validation row (is validation.interval > 0?)")
    best = max(rows, key=lambda r: float(r["val_dice_mean"]))
    return {k[len("val_"):]: float(v) for k, v in best.items() if k.startswith("val_") and v not in ("", None)}


def run_cell(base: dict[str, Any], cell: Cell, out_dir: Path, budget_minutes: float | None,
             device: str | None = None) -> dict[str, Any]:
    """Train and evaluate one cell; writes and returns its result record."""
    from attnseg.models import count_parameters, create_model
    from attnseg.train import run_training
    from attnseg.train.config import resolve_config
    from attnseg.train.data import model_kwargs

    cfg = cell_config(base, cell, out_dir, budget_minutes)
    if device:
        cfg["device"] = device
    run_dir = Path(cfg["output_dir"]) / cfg["name"]
    last = run_dir / "checkpoints" / "last.pt"
    t0 = time.perf_counter()
    res = run_training(cfg, resume=True if last.exists() else None)
    seconds = time.perf_counter() - t0
    scores = _last_validation(run_dir)
    params = count_parameters(create_model(cfg["model"]["name"], **model_kwargs(resolve_config(cfg))))
    record = {"backbone": cell.backbone, "attention": cell.attention, "seed": cell.seed,
              "params": params, "train_seconds": round(seconds, 1), "epochs": res.epochs_done,
              "iterations": res.iterations, "scores": scores, "run_dir": str(run_dir)}
    path = out_dir / "cells" / f"{cell.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return record


def table_rows(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Aggregate cell records over seeds: one row per (backbone, attention)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["backbone"], r["attention"]), []).append(r)
    metric_keys = sorted({k for r in records for k in r["scores"] if k.startswith("dice_") and k != "dice_mean"})
    hd_keys = sorted({k for r in records for k in r["scores"] if k.startswith("hd95_")})
    rows = []
    for (bb, att), rs in groups.items():
        row: dict[str, Any] = {"backbone": bb, "attention": att, "seeds": len(rs)}
        for k in [*metric_keys, "dice_mean", *hd_keys]:
            vals = [r["scores"][k] for r in rs if k in r["scores"]]
            row[k] = float(np.mean(vals)) if vals else None
        row["params"] = rs[0]["params"]
        row["minutes"] = float(np.mean([r["train_seconds"] for r in rs])) / 60
        rows.append(row)
    columns = ["backbone", "attention", *metric_keys, "dice_mean", *hd_keys, "params", "minutes", "seeds"]
    return rows, columns


def run_on_devices(jobs: Sequence[Any], devices: Sequence[str], submit: Callable[[Any, str], Future],
                   done: Callable[[Any], None] = lambda job: None) -> None:
    """Run ``jobs`` with one job per device at a time: a job starts on a device only when that
    device is free, so no device holds two jobs while another idles (a fixed round-robin
    assignment queues jobs behind a slow one). ``submit(job, device)`` starts a job and returns
    its future; the first failure is re-raised after the running jobs finish."""
    if len(set(devices)) != len(devices):
        raise ValueError(f"--devices names a device twice: {','.join(devices)}")
    pending = list(jobs)
    free = list(devices)
    running: dict[Future, tuple[Any, str]] = {}
    error: BaseException | None = None
    while pending or running:
        while pending and free and error is None:
            job, device = pending.pop(0), free.pop(0)
            running[submit(job, device)] = (job, device)
        if not running:
            break
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for f in finished:
            job, device = running.pop(f)
            free.append(device)
            exc = f.exception()
            if exc is not None:
                error = error or exc
            else:
                done(job)
    if error is not None:
        raise error


def run_ablation(config: dict[str, Any], backbones: Sequence[str], attentions: Sequence[str], out_dir: str | Path,
                 *, budget_minutes: float | None = None, seeds: int = 1, devices: Sequence[str] = (),
                 command: str | None = None, log: Callable[[str], None] = _log) -> Path:
    """Run every cell not yet finished, then write ``OUT/ablation.md``; returns its path."""
    from attnseg.report.table import markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = [Cell(b, a, s) for b in backbones for a in attentions for s in range(seeds)]
    todo = [c for c in cells if not (out / "cells" / f"{c.name}.json").exists()]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already finished")
    if devices and len(devices) > 1:
        with ProcessPoolExecutor(len(devices)) as pool:
            def submit(c: Cell, device: str) -> Future:
                log(f"training {c.name} on {device}")
                return pool.submit(run_cell, config, c, out, budget_minutes, device)

            run_on_devices(todo, devices, submit, lambda c: log(f"finished {c.name}"))
    else:
        for c in todo:
            log(f"training {c.name}")
            run_cell(config, c, out, budget_minutes, devices[0] if devices else None)
    records = [json.loads((out / "cells" / f"{c.name}.json").read_text()) for c in cells]
    rows, columns = table_rows(records)
    text = ["# Ablation: backbone × attention", ""]
    if command:
        text += ["Made by:", "", "```", command, "```", ""]
    budget = f"{budget_minutes:g} min per cell" if budget_minutes else "the config's epochs"
    text += [f"Same data split and budget ({budget}) for every cell; validation Dice/HD95 of the best "
             f"epoch, mean over {seeds} seed(s); params = trainable parameters; minutes = training time.", ""]
    text.append(markdown_table(rows, columns))
    path = out / "ablation.md"
    path.write_text("\n".join(text))
    return path
