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
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnseg.experiments.ablate_stats import cell_stats, compare_to_none, forest_plot
from attnseg.infer.predict import load_predictor, predict_cases
from attnseg.metrics.evaluate import evaluate_folders
from attnseg.models import count_parameters, create_model
from attnseg.report.table import markdown_table
from attnseg.train import run_training
from attnseg.train.config import resolve_config
from attnseg.train.data import model_kwargs

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


def _gflops(model: Any, in_channels: int, patch: Sequence[int]) -> float:
    """Forward GFLOPs of one patch (batch 1), ``torch.utils.flop_counter`` (multiply-add = 2 FLOPs)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, *patch))
    return counter.get_total_flops() / 1e9


def _per_case_scores(run_dir: Path, test_dir: Path, cfg: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Predict the held-out cases with the cell's best checkpoint and score them (BraTS rules):
    ``{case_id: {dice_<region>: .., hd95_<region>: .., dice_mean: .., hd95_mean: ..}}``."""
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.exists():
        ckpt = run_dir / "checkpoints" / "last.pt"
    val = cfg.get("validation", {})
    patch = list(val.get("roi_size") or cfg["data"]["patch_size"])  # the window the trainer validates with
    if cfg["data"].get("slice_axis") is not None:
        patch = patch[-2:]
    predictor = load_predictor(ckpt, roi_size=patch, overlap=float(val.get("overlap", 0.5)),
                               sw_batch_size=int(val.get("sw_batch_size", 2)), blend="gaussian",
                               device=str(cfg.get("device") or "cpu").replace("auto", "cpu"))
    pred_dir = run_dir / "test_predictions"
    results = predict_cases(predictor, test_dir, pred_dir, layout="brats", resume=True)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"{run_dir.name}: {len(failed)} held-out case(s) failed to predict: {failed[0].error}")
    rows, _ = evaluate_folders(pred_dir, test_dir, regions="brats")
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        m = out.setdefault(r["case_id"], {})
        for key in ("dice", "hd95"):
            if r.get(key) is not None:
                m[f"{key}_{r['region']}"] = float(r[key])
    for m in out.values():
        for key in ("dice", "hd95"):
            vals = [v for k, v in m.items() if k.startswith(key + "_")]
            if vals:
                m[f"{key}_mean"] = float(np.mean(vals))
    return out


def run_cell(base: dict[str, Any], cell: Cell, out_dir: Path, budget_minutes: float | None,
             device: str | None = None, test_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate one cell; writes and returns its result record.

    With ``test_dir`` the best checkpoint also segments those held-out cases and the record
    holds their per-case Dice/HD95 (``per_case``), which the seeded statistics need."""
    cfg = cell_config(base, cell, out_dir, budget_minutes)
    if device:
        cfg["device"] = device
    run_dir = Path(cfg["output_dir"]) / cfg["name"]
    last = run_dir / "checkpoints" / "last.pt"
    t0 = time.perf_counter()
    res = run_training(cfg, resume=True if last.exists() else None)
    seconds = time.perf_counter() - t0
    scores = _last_validation(run_dir)
    rcfg = resolve_config(cfg)
    model = create_model(cfg["model"]["name"], **model_kwargs(rcfg))
    params = count_parameters(model)
    patch = list(rcfg["data"]["patch_size"])[-2:] if rcfg["data"].get("slice_axis") else rcfg["data"]["patch_size"]
    in_ch = int(rcfg["task"]["in_channels"]) * (2 * int(rcfg["data"].get("context") or 0) + 1)
    record = {"backbone": cell.backbone, "attention": cell.attention, "seed": cell.seed,
              "params": params, "gflops": round(_gflops(model, in_ch, patch), 4),
              "train_seconds": round(seconds, 1), "epochs": res.epochs_done,
              "iterations": res.iterations, "seconds_per_iteration": round(seconds / max(res.iterations, 1), 4),
              "scores": scores, "run_dir": str(run_dir)}
    if test_dir is not None:
        t1 = time.perf_counter()
        record["per_case"] = _per_case_scores(run_dir, Path(test_dir), cfg)
        record["test_dir"] = str(test_dir)
        record["test_seconds"] = round(time.perf_counter() - t1, 1)
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
    its future; the first failure is re-raised after the running jobs finish. Each entry of
    ``devices`` is one slot: ``cpu,cpu`` runs two jobs side by side on the CPU."""
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
                 command: str | None = None, log: Callable[[str], None] = _log,
                 test_dir: str | Path | None = None, table_only: bool = False) -> Path:
    """Run every cell not yet finished, then write ``OUT/ablation.md``; returns its path.

    With ``test_dir`` every cell is also scored per case on those held-out cases and the page
    gets the seeded statistics (:func:`seeded_statistics`): mean ± sd over seeds, bootstrap
    CIs, paired comparisons with the backbone without attention, a forest plot.
    ``table_only``: train nothing; the page is made from the finished cells and lists the missing ones."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # seed-major: an interrupted run has whole seeds of every cell (paired comparisons need them)
    cells = [Cell(b, a, s) for s in range(seeds) for b in backbones for a in attentions]
    todo = [c for c in cells if not (out / "cells" / f"{c.name}.json").exists()]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already finished")
    if table_only:
        pass
    elif devices and len(devices) > 1:
        # spawned workers: a forked child cannot initialise CUDA once its parent has
        with ProcessPoolExecutor(len(devices), mp_context=multiprocessing.get_context("spawn")) as pool:
            def submit(c: Cell, device: str) -> Future:
                log(f"training {c.name} on {device}")
                return pool.submit(run_cell, config, c, out, budget_minutes, device, test_dir)

            run_on_devices(todo, devices, submit, lambda c: log(f"finished {c.name}"))
    else:
        for c in todo:
            log(f"training {c.name}")
            run_cell(config, c, out, budget_minutes, devices[0] if devices else None, test_dir)
    missing = [c.name for c in cells if not (out / "cells" / f"{c.name}.json").exists()]
    records = [json.loads((out / "cells" / f"{c.name}.json").read_text()) for c in cells if c.name not in missing]
    if not records:
        raise ValueError(f"{out / 'cells'}: no finished cell to tabulate")
    rows, columns = table_rows(records)
    text = ["# Ablation: backbone × attention", ""]
    if command:
        text += ["Made by:", "", "```", command, "```", ""]
    budget = f"{budget_minutes:g} min per cell" if budget_minutes else "the config's epochs"
    text += [f"Same data split and budget ({budget}) for every cell; validation Dice/HD95 of the best "
             f"epoch, mean over {seeds} seed(s); params = trainable parameters; minutes = training time.", ""]
    text.append(markdown_table(rows, columns))
    if missing:
        text += ["", f"**Not finished ({len(missing)} of {len(cells)} cells):** " + ", ".join(missing)
                 + ". Every statistic below uses only the finished cells (a cell's seed count is in its row)."]
    if any("per_case" in r for r in records):
        text += ["", *seeded_statistics(records, out)]
    path = out / "ablation.md"
    path.write_text("\n".join(text))
    return path


def seeded_statistics(records: Sequence[dict[str, Any]], out: Path, n_boot: int = 10000) -> list[str]:
    """Markdown lines of the seeded statistics (cells with per-case scores only); writes ``OUT/forest.png``."""
    cells: dict[tuple[str, str], dict[int, Any]] = {}
    meta: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if "per_case" in r:
            cells.setdefault((r["backbone"], r["attention"]), {})[int(r["seed"])] = r["per_case"]
            meta.setdefault((r["backbone"], r["attention"]), []).append(r)
    n_cases = max(len(pc) for cell in cells.values() for pc in cell.values())
    metrics = ["dice_ET", "dice_TC", "dice_WT", "dice_mean", "hd95_mean"]
    lines = ["## Held-out cases: mean ± sd over seeds [95 % bootstrap CI over cases]", "",
             f"Every cell's best checkpoint segments the same {n_cases} held-out cases (Gaussian sliding window, "
             "BraTS rules: a region empty in both scores Dice 1 / HD95 0, empty on one side Dice 0). "
             "mean ± sd: over seeds, of the mean over cases; CI: percentile bootstrap (10 000 resamples of the "
             "cases) of the mean of the seed-averaged per-case scores. Overhead against the backbone without "
             "attention; GFLOPs: one forward of one training patch; s/it: training seconds per iteration "
             "(shared CPU: noisy).", ""]
    rows = []
    for (bb, att), pc in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1])):
        row: dict[str, Any] = {"backbone": bb, "attention": att, "seeds": len(pc)}
        for m in metrics:
            st = cell_stats(pc, m, n_boot=n_boot)
            dg = 3 if m.startswith("dice") else 1
            row[m] = f"{st['mean']:.{dg}f} ± {st['sd']:.{dg}f} [{st['lo']:.{dg}f}, {st['hi']:.{dg}f}]"
        rs, base = meta[(bb, att)], meta.get((bb, "none"))
        row["params"] = rs[0]["params"]
        row["GFLOPs"] = rs[0].get("gflops")
        if base and att != "none":
            row["Δparams"] = f"{rs[0]['params'] - base[0]['params']:+,}"
            if rs[0].get("gflops") and base[0].get("gflops"):
                row["ΔGFLOPs"] = f"{100 * (rs[0]['gflops'] / base[0]['gflops'] - 1):+.1f} %"
        sp = [r["seconds_per_iteration"] for r in rs if r.get("seconds_per_iteration")]
        row["s/it"] = round(float(np.mean(sp)), 3) if sp else None
        rows.append(row)
    lines.append(markdown_table(rows, ["backbone", "attention", *metrics, "params", "Δparams", "GFLOPs",
                                       "ΔGFLOPs", "s/it", "seeds"]))
    lines += ["", "## Paired comparisons with the same backbone without attention", "",
              "Per held-out case: score(module) − score(none), each averaged over seeds; mean difference; 95 % "
              "bootstrap CI (the seeds of each cell resampled, then the cases, so seed-to-seed variation widens "
              "it); two-sided Wilcoxon signed-rank p over cases (scipy.stats.wilcoxon); Holm-adjusted p over the "
              "comparisons of each metric; cases +/−: cases with a positive/negative difference. Verdict: "
              "better/worse when p_Holm < 0.05 and the CI excludes 0, else no detectable difference. HD95: lower "
              "is better.", ""]
    comp_rows, forest = [], []
    by_region: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for m in ("dice_mean", "dice_ET", "dice_TC", "dice_WT", "hd95_mean"):
        comps = compare_to_none(cells, m, n_boot=n_boot, higher_is_better=not m.startswith("hd95"))
        if m == "dice_mean":
            forest = comps
        elif m.startswith("dice_"):
            for c in comps:
                by_region.setdefault((c["backbone"], c["attention"]), {})[m[5:]] = c
        dg = 3 if m.startswith("dice") else 1
        for c in comps:
            comp_rows.append({"metric": m, "backbone": c["backbone"], "attention": c["attention"],
                              "diff": f"{c['diff']:+.{dg}f}", "95 % CI": f"[{c['lo']:+.{dg}f}, {c['hi']:+.{dg}f}]",
                              "p": f"{c['p']:.3g}", "p_Holm": f"{c['p_holm']:.3g}",
                              "cases +/−": f"{c['wins']}/{c['losses']}", "n": c["n"], "verdict": c["verdict"]})
    if comp_rows:
        lines.append(markdown_table(comp_rows, ["metric", "backbone", "attention", "diff", "95 % CI", "p", "p_Holm",
                                                "cases +/−", "n", "verdict"]))
    if forest:
        forest_plot(forest, out / "forest.png", "Δ mean Dice (ET, TC, WT) vs no attention")
        lines += ["", "![forest plot: mean Dice difference per module, 95 % CI](forest.png)", "",
                  "## What the data support", ""]
        for c in forest:
            clause = region_clause(by_region.get((c["backbone"], c["attention"]), {}))
            lines.append(f"- **{c['backbone']} + {c['attention']}**: " + " ".join(filter(None, [verdict_sentence(c),
                                                                                                clause])))
        lines.append("")
    return lines


def _within_seed_noise(c: Mapping[str, Any]) -> bool:
    """No verdict, yet consistent over cases (p_Holm < 0.05): the CI that also resamples seeds includes 0."""
    return c["verdict"] == "no detectable difference" and c["p_holm"] < 0.05


def region_clause(regions: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-region Dice verdicts of one module (rows of ``compare_to_none`` keyed by region) with
    difference [95 % CI], e.g. "By region: WT better (+0.020 [+0.005, +0.043]); ET, TC no detectable
    difference."; empty without regions."""
    def nums(c: Mapping[str, Any]) -> str:
        return f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"

    nd = "no detectable difference"
    found = [f"{r} {c['verdict']} ({nums(c)})" for r, c in regions.items() if c["verdict"] != nd]
    found += [f"{r} consistent over cases but within seed-to-seed variation ({nums(c)}, p_Holm {c['p_holm']:.2g})"
              for r, c in regions.items() if _within_seed_noise(c)]
    none = [r for r, c in regions.items() if c["verdict"] == nd and not _within_seed_noise(c)]
    if none:
        found.append(", ".join(none) + " " + nd)
    return "By region: " + "; ".join(found) + "." if found else ""


def verdict_sentence(c: dict[str, Any]) -> str:
    """One sentence on a paired mean-Dice comparison (a row of ``compare_to_none``)."""
    nums = (f"Δ mean Dice {c['diff']:+.3f}, 95 % CI [{c['lo']:+.3f}, {c['hi']:+.3f}], Wilcoxon p {c['p']:.2g} "
            f"(Holm {c['p_holm']:.2g}), better on {c['wins']} and worse on {c['losses']} of {c['n']} cases")
    if c["verdict"] == "better":
        return f"better than without attention ({nums})."
    if c["verdict"] == "worse":
        return f"worse than without attention ({nums})."
    if _within_seed_noise(c):  # consistent over cases, but not beyond what another set of seeds could give
        return (f"no detectable difference beyond seed-to-seed variation: the seed-averaged scores differ "
                f"consistently over cases, but the CI that also resamples the seeds includes 0 ({nums}).")
    return f"no detectable difference from the backbone without attention ({nums})."
