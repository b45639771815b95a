"""The main job end to end (``attnseg demo`` / ``make demo``).

1. make the built-in phantom BraTS data at 2 mm, the realistic phantom by default
   (training/validation cases and held-out test cases in two folders; reused when already there),
2. train a CPU-sized Prior Attention Network with deep supervision (``demo-panet.yaml``
   beside this file),
3. predict the held-out cases with the Gaussian sliding window,
4. evaluate ET/TC/WT Dice and HD95, write the HTML report,
5. print the final table and where everything is.

Re-running reuses the data; ``resume=True`` continues (or skips) the training and the
predictions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnseg.data.synth import make_synth_brats
from attnseg.infer.predict import load_predictor, predict_cases
from attnseg.metrics.evaluate import evaluate_folders, summarize, write_outputs
from attnseg.report.html import build_report
from attnseg.train import run_training
from attnseg.train.config import apply_overrides, load_yaml, resolve_config
from attnseg.train.distributed import inference_precision, pick_device

DEMO_CONFIG = Path(__file__).with_name("demo-panet.yaml")


@dataclass
class DemoResult:
    out_dir: Path
    run_dir: Path
    pred_dir: Path
    eval_dir: Path
    report: Path | None
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_phantom_data(root: Path, train_cases: int, test_cases: int, seed: int, spacing: int = 2,
                        log: Callable[[str], None] = _log, difficulty: str = "realistic") -> tuple[Path, Path]:
    """Make (or reuse) ``root/train`` (training + validation cases) and ``root/test`` (held out).

    The test cases continue the generator's numbering, so they are different phantoms from
    the same distribution. A folder is reused only when its ``synth_info.json`` matches the
    requested seed, spacing, difficulty and case count.
    """
    folders = {"train": (root / "train", 0, train_cases), "test": (root / "test", train_cases, test_cases)}
    for name, (folder, start, n) in folders.items():
        info = folder / "synth_info.json"
        if info.is_file():
            meta = json.loads(info.read_text())
            have = meta.get("difficulty", "easy")  # folders written before difficulties existed are easy
            if (meta.get("seed") == seed and meta.get("spacing_mm") == spacing
                    and len(meta.get("cases", {})) == n and have == difficulty):
                log(f"reusing {n} {name} phantom cases in {folder}")
                continue
            raise ValueError(f"{folder} holds phantom data made with other settings "
                             f"(seed {meta.get('seed')}, spacing {meta.get('spacing_mm')}, {have}, "
                             f"{len(meta.get('cases', {}))} cases); remove it or choose another --out")
        t0 = time.perf_counter()
        log(f"making {n} {difficulty} {name} phantom cases at {spacing} mm in {folder} ...")
        make_synth_brats(folder, cases=n, spacing=spacing, seed=seed, start=start, difficulty=difficulty)
        log(f"  done in {time.perf_counter() - t0:.0f} s")
    return folders["train"][0], folders["test"][0]


def predict_settings(cfg: dict[str, Any]) -> tuple[str, str]:
    """``(device, precision)`` for predicting with the model ``cfg`` trained: the training device
    and the sliding-window precision matching the training precision (the predictor takes
    fp32/bf16; ``mixed``/``fp16``/``auto`` are mapped, never passed through)."""
    full = resolve_config(cfg)
    device = pick_device(full["device"], env={})  # the demo runs in one process
    return str(device), inference_precision(str(full["train"]["precision"]), device)


def demo_config(train_dir: Path, out_dir: Path, seed: int, overrides: Sequence[str] = (),
                base: Path = DEMO_CONFIG) -> dict[str, Any]:
    """The training config of the demo: ``demo-panet.yaml`` pointed at the phantom data."""
    cfg = load_yaml(base)
    cfg["name"] = f"panet-seed{seed}"
    cfg["output_dir"] = str(out_dir / "runs")
    cfg["seed"] = seed
    cfg.setdefault("data", {})["root"] = str(train_dir)
    return apply_overrides(cfg, list(overrides))


def run_demo(out_dir: str | os.PathLike = "demo_output", *, seed: int = 0, train_cases: int = 24,
             test_cases: int = 20, resume: bool = False, overrides: Sequence[str] = (),
             tta: bool = False, report: bool = True, log: Callable[[str], None] = _log,
             difficulty: str = "realistic") -> DemoResult:
    """Run the whole demo; returns where everything went and the evaluation summary."""
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    train_dir, test_dir = ensure_phantom_data(out / "data", train_cases, test_cases, seed=0, log=log,
                                              difficulty=difficulty)
    seconds["data"] = time.perf_counter() - t0

    cfg = demo_config(train_dir, out, seed, overrides)
    run_dir = Path(cfg["output_dir"]) / cfg["name"]
    best = run_dir / "checkpoints" / "best.pt"
    last = run_dir / "checkpoints" / "last.pt"
    t0 = time.perf_counter()
    if resume and (run_dir / "DONE").exists():
        log(f"training already finished in {run_dir}; reusing it (--resume)")
    else:
        log(f"training {cfg['model']['name']} → {run_dir}")
        run_training(cfg, resume=True if (resume and last.exists()) else None)
        (run_dir / "DONE").write_text("finished\n")
    seconds["train"] = time.perf_counter() - t0

    ckpt = best if best.exists() else last
    pred_dir, eval_dir = run_dir / "predictions", run_dir / "eval"
    t0 = time.perf_counter()
    val = cfg.get("validation", {})
    device, precision = predict_settings(cfg)
    predictor = load_predictor(ckpt, roi_size=cfg["data"]["patch_size"], overlap=0.5,
                               sw_batch_size=int(val.get("sw_batch_size", 2)), tta=tta,
                               precision=precision, blend="gaussian", device=device)
    log(f"predicting {test_cases} held-out cases with {ckpt.name} (Gaussian sliding window"
        f"{', mirroring' if tta else ''}) → {pred_dir}")
    results = predict_cases(predictor, test_dir, pred_dir, layout="brats", resume=resume, log=log)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} test case(s) failed to predict: "
                           + "; ".join(f"{r.case_id}: {r.error}" for r in failed))
    seconds["predict"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, info = evaluate_folders(pred_dir, test_dir, regions="brats")
    summary = summarize(rows)
    write_outputs(rows, summary, info, eval_dir)
    seconds["evaluate"] = time.perf_counter() - t0

    report_path = None
    if report:
        t0 = time.perf_counter()
        report_path = build_report(run_dir, eval_dir=eval_dir, pred_dir=pred_dir, data_dir=test_dir).html
        seconds["report"] = time.perf_counter() - t0
    return DemoResult(out, run_dir, pred_dir, eval_dir, report_path, summary, seconds)
