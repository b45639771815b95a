"""Reading what a report shows: a run folder (``attnseg train``) and an evaluation folder
(``attnseg evaluate``), tolerant of columns that a given run does not have.

Formats (docs/report.md): ``RUN_DIR/metrics.csv`` has one row per epoch with ``epoch``,
``iteration``, ``lr``, ``train_loss`` (+ ``train_loss_<part>``), ``val_dice_<region>``,
``val_hd95_<region>``, ``val_dice_mean``, ``time_s`` (validation columns are empty on epochs
without validation). ``EVAL_DIR/per_case.csv`` is long (one row per case and region/class:
``case_id``, ``region`` or ``class``, ``dice``, ``hd95``, ...) or wide (one row per case with
``dice_<region>`` columns); ``EVAL_DIR/summary.json`` is optional.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# the region/class column of a long per-case table, in order of preference
LABEL_COLUMNS = ("region", "class", "label", "structure")
# metrics shown first, in this order, when present; then any other numeric column
METRIC_ORDER = ("dice", "hd95", "jaccard", "sensitivity", "specificity", "assd", "volume_diff", "volume_difference")
LOWER_IS_BETTER = ("hd95", "hd", "assd", "asd", "msd", "volume_diff", "volume_difference", "rvd")
# canonical BraTS order when those names occur
_BRATS_ORDER = ("WT", "TC", "ET")


def to_number(v: Any) -> float | int | None:
    """CSV cell → int/float, ``None`` for empty, ``nan`` or non-numeric text."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return None if isinstance(v, float) and math.isnan(v) else v
    s = str(v).strip()
    if not s:
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return None
    return None if math.isnan(f) else f


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file; numeric cells converted (see :func:`to_number`), other text kept."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    def cell(v: Any) -> Any:
        n = to_number(v)
        if n is not None:
            return n
        text = str(v or "").strip()
        return None if text.lower() in ("", "nan", "none") else text

    return [{k: cell(v) for k, v in r.items() if k is not None} for r in rows]


def order_labels(labels: list[str]) -> list[str]:
    """WT, TC, ET first (the usual BraTS reading order: largest region first), others as given."""
    known = [n for n in _BRATS_ORDER if n in labels]
    return known + [n for n in labels if n not in known]


@dataclass
class RunData:
    """Everything read from a run folder; missing parts are ``None``/empty with a note why."""

    path: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def model_name(self) -> str | None:
        m = self.config.get("model")
        return m.get("name") if isinstance(m, dict) else (m if isinstance(m, str) else None)

    @property
    def task_kind(self) -> str | None:
        t = self.config.get("task")
        return t.get("kind") if isinstance(t, dict) else None

    def data_root(self) -> Path | None:
        d = self.config.get("data")
        root = d.get("root") if isinstance(d, dict) else None
        return Path(root) if root else None

    def columns(self, prefix: str) -> list[str]:
        cols: list[str] = []
        for r in self.metrics:
            cols += [k for k in r if k.startswith(prefix) and k not in cols]
        return cols


def read_run(run_dir: str | Path) -> RunData:
    """Read ``metrics.csv``, ``config.yaml``, ``env.json`` and locate the best/last checkpoint.

    Raises ``FileNotFoundError`` when ``run_dir`` is not a folder or holds none of these files.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run folder not found")
    data = RunData(path=run)
    found = False
    if (run / "metrics.csv").is_file():
        found = True
        data.metrics = read_csv(run / "metrics.csv")
        if data.metrics and "epoch" not in data.metrics[0]:
            raise ValueError(f"{run / 'metrics.csv'}: no 'epoch' column (columns: {sorted(data.metrics[0])})")
    else:
        data.notes.append("no metrics.csv: training curves are not shown")
    if (run / "config.yaml").is_file():
        found = True

        try:
            cfg = yaml.safe_load((run / "config.yaml").read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{run / 'config.yaml'}: not valid YAML ({exc})") from exc
        data.config = cfg if isinstance(cfg, dict) else {}
    if (run / "env.json").is_file():
        found = True
        try:
            env = json.loads((run / "env.json").read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{run / 'env.json'}: not valid JSON ({exc})") from exc
        data.env = env if isinstance(env, dict) else {}
    for name in ("best.pt", "last.pt"):
        if (run / "checkpoints" / name).is_file():
            data.checkpoint = run / "checkpoints" / name
            found = True
            break
    if not found:
        raise FileNotFoundError(f"{run}: not a run folder (no metrics.csv, config.yaml, env.json or "
                                f"checkpoints/ found)")
    return data


@dataclass
class EvalData:
    """Per-case scores in long form: ``rows`` of ``{"case_id", "label", <metric>: value}``."""

    path: Path
    rows: list[dict[str, Any]]
    labels: list[str]
    metrics: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def values(self, label: str, metric: str) -> list[float]:
        """Finite values of ``metric`` for region/class ``label`` over the cases."""
        out = []
        for r in self.rows:
            v = r.get(metric)
            if r["label"] == label and isinstance(v, (int, float)) and math.isfinite(v):
                out.append(float(v))
        return out

    @property
    def case_ids(self) -> list[str]:
        seen: list[str] = []
        for r in self.rows:
            if r["case_id"] not in seen:
                seen.append(r["case_id"])
        return seen

    def case_scores(self, case_id: str, metric: str) -> dict[str, float]:
        return {r["label"]: float(r[metric]) for r in self.rows
                if r["case_id"] == case_id and isinstance(r.get(metric), (int, float))}

    def case_mean(self, case_id: str, metric: str = "dice") -> float | None:
        vals = [v for v in self.case_scores(case_id, metric).values() if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    def ranked_cases(self, metric: str = "dice") -> list[tuple[str, float]]:
        """``(case_id, mean over labels)`` sorted best first (higher is better for ``metric``)."""
        scored = [(c, self.case_mean(c, metric)) for c in self.case_ids]
        scored = [(c, v) for c, v in scored if v is not None]
        lower = metric in LOWER_IS_BETTER
        return sorted(scored, key=lambda cv: (cv[1] if lower else -cv[1], cv[0]))

    def pick_cases(self, metric: str = "dice") -> dict[str, tuple[str, float]]:
        """The best, median and worst case by mean ``metric`` (fewer keys when there are < 3 cases)."""
        ranked = self.ranked_cases(metric)
        if not ranked:
            return {}
        picks = {"best": ranked[0], "median": ranked[(len(ranked) - 1) // 2], "worst": ranked[-1]}
        out: dict[str, tuple[str, float]] = {}
        for k, v in picks.items():  # one case may be best and median at once when n < 3
            if v[0] not in [w[0] for w in out.values()]:
                out[k] = v
        return out


def _long_rows(raw: list[dict[str, Any]], source: Path) -> tuple[list[dict[str, Any]], list[str]]:
    if not raw:
        raise ValueError(f"{source}: no rows")
    cols = list(raw[0])
    case_col = next((c for c in ("case_id", "case", "subject", "id") if c in cols), None)
    if case_col is None:
        raise ValueError(f"{source}: no case_id column (columns: {cols})")
    label_col = next((c for c in LABEL_COLUMNS if c in cols), None)
    rows: list[dict[str, Any]] = []
    if label_col is not None:  # long form
        for r in raw:
            row = {"case_id": str(r[case_col]), "label": str(r[label_col])}
            row.update({k: v for k, v in r.items() if k not in (case_col, label_col) and isinstance(v, (int, float))})
            rows.append(row)
        metrics = [k for k in cols if k not in (case_col, label_col)
                   and any(isinstance(r.get(k), (int, float)) for r in raw)]
        return rows, metrics
    # wide form: <metric>_<label> columns
    known = [m for m in sorted(METRIC_ORDER, key=len, reverse=True)]
    metrics: list[str] = []
    for r in raw:
        per_label: dict[str, dict[str, Any]] = {}
        for k, v in r.items():
            m = next((m for m in known if k.startswith(m + "_")), None)
            if m is None or not isinstance(v, (int, float)):
                continue
            label = k[len(m) + 1:]
            if label in ("mean", "avg", "average"):
                continue
            per_label.setdefault(label, {})[m] = v
            if m not in metrics:
                metrics.append(m)
        for label, vals in per_label.items():
            rows.append({"case_id": str(r[case_col]), "label": label, **vals})
    if not rows:
        raise ValueError(f"{source}: neither a region/class column nor <metric>_<region> columns "
                         f"(columns: {cols})")
    return rows, metrics


def read_eval(eval_dir: str | Path) -> EvalData:
    """Read ``per_case.csv`` (+ ``summary.json``) of an ``attnseg evaluate`` output folder."""
    d = Path(eval_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: evaluation folder not found")
    per_case = d / "per_case.csv"
    if not per_case.is_file():
        raise FileNotFoundError(f"{per_case}: not found (run `attnseg evaluate --out {d}` first)")
    rows, metrics = _long_rows(read_csv(per_case), per_case)
    summary: dict[str, Any] = {}
    if (d / "summary.json").is_file():
        try:
            s = json.loads((d / "summary.json").read_text())
            summary = s if isinstance(s, dict) else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{d / 'summary.json'}: not valid JSON ({exc})") from exc
    labels: list[str] = []
    for r in rows:
        if r["label"] not in labels:
            labels.append(r["label"])
    ordered = [m for m in METRIC_ORDER if m in metrics] + [m for m in metrics if m not in METRIC_ORDER]
    return EvalData(path=d, rows=rows, labels=order_labels(labels), metrics=ordered, summary=summary)


def describe(values: list[float]) -> dict[str, float | int | None]:
    """n, mean, std, median, q1, q3, min, max of ``values`` (None when empty).

    ``std`` is the population standard deviation (ddof 0), as in ``attnseg evaluate``'s
    summary, so the report and summary.json agree.
    """
    if not values:
        return {"n": 0, "mean": None, "std": None, "median": None, "q1": None, "q3": None, "min": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()),
            "median": float(np.median(a)), "q1": float(np.percentile(a, 25)), "q3": float(np.percentile(a, 75)),
            "min": float(a.min()), "max": float(a.max())}
