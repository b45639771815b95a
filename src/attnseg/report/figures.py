"""Report figures (matplotlib, Agg backend): training curves and per-region box plots.

Every function writes one PNG and returns its path; nothing is shown on screen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.report.rundata import LOWER_IS_BETTER, EvalData, order_labels
from attnseg.runtime.optional import pyplot

# fixed colours per BraTS region so every figure of a report agrees (WT green, TC red, ET yellow)
REGION_COLOURS = {"WT": "#2ca02c", "TC": "#d62728", "ET": "#e6b800", "mean": "#333333"}
_CYCLE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
DPI = 110


def colour(label: str, i: int = 0) -> str:
    """Colour of a region/class name (fixed for WT/TC/ET, else a colour-cycle entry)."""
    return REGION_COLOURS.get(label, _CYCLE[i % len(_CYCLE)])


def _plt() -> Any:
    return pyplot("report figures")  # optional: the [report] extra


def _finite(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        x, y = r.get("epoch"), r.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def _integer_epochs(ax: Any) -> None:
    """Whole-number epoch ticks (a one-epoch run would otherwise get ticks 0.96 … 1.04)."""
    from matplotlib.ticker import MaxNLocator  # optional ([report]); _plt() named the extra already

    lo, hi = ax.dataLim.intervalx
    if math.isfinite(lo) and math.isfinite(hi) and hi - lo < 4:  # few epochs: pad to whole numbers
        ax.set_xlim(math.floor(lo) - 1, math.ceil(hi) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    _plt().close(fig)
    return path


def plot_loss(rows: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Training loss (total and its parts) and learning rate per epoch → ``path``.

    Returns ``None`` (and writes nothing) when there is no ``train_loss`` value.
    """
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("train_loss")]
    if not keys or not _finite(rows, "train_loss")[0] and not any(_finite(rows, k)[0] for k in keys):
        return None
    plt = _plt()
    has_lr = bool(_finite(rows, "lr")[0])
    fig, axes = plt.subplots(1, 2 if has_lr else 1, figsize=(10 if has_lr else 6, 3.6),
                             gridspec_kw={"width_ratios": [2, 1]} if has_lr else None, squeeze=False)
    ax = axes[0][0]
    for i, k in enumerate(keys):
        xs, ys = _finite(rows, k)
        if not xs:
            continue
        total = k == "train_loss"
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, lw=2.2 if total else 1.2,
                color="#111111" if total else _CYCLE[i % len(_CYCLE)],
                label="total" if total else k[len("train_loss_"):].replace("_", " "))
    positive = all(v > 0 for k in keys for v in _finite(rows, k)[1])
    if positive:
        spans = [max(_finite(rows, k)[1]) / min(_finite(rows, k)[1]) for k in keys if _finite(rows, k)[1]]
        if spans and max(spans) > 20:  # several decades: a log axis keeps the tail readable
            ax.set_yscale("log")
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("training loss (mean over the epoch)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend(fontsize=8, frameon=False)
    if has_lr:
        ax2 = axes[0][1]
        xs, ys = _finite(rows, "lr")
        ax2.plot(xs, ys, color="#555555", lw=1.5, marker="o" if len(xs) < 30 else None, ms=3)
        _integer_epochs(ax2)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("learning rate (end of epoch)")
        ax2.set_title("Learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_validation(rows: Sequence[dict[str, Any]], path: str | Path, metric: str = "dice") -> Path | None:
    """Validation ``metric`` per region/class (and their mean) over the epochs → ``path``.

    Only epochs with validation are plotted. Returns ``None`` when there is no such column.
    """
    prefix = f"val_{metric}_"
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith(prefix)]
    keys = [k for k in keys if _finite(rows, k)[0]]
    if not keys:
        return None
    labels = order_labels([k[len(prefix):] for k in keys if k != prefix + "mean"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, label in enumerate([*labels, "mean"]):
        xs, ys = _finite(rows, prefix + label)
        if not xs:
            continue
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3.5, lw=2.4 if label == "mean" else 1.5,
                ls="--" if label == "mean" else "-", color=colour(label, i), label=label)
    lower = metric in LOWER_IS_BETTER
    mean_x, mean_y = _finite(rows, prefix + "mean")
    if mean_y:  # mark the best validation epoch, the one best.pt was taken from for the default metric
        j = min(range(len(mean_y)), key=lambda t: mean_y[t]) if lower else max(range(len(mean_y)),
                                                                                key=lambda t: mean_y[t])
        ax.scatter([mean_x[j]], [mean_y[j]], s=90, facecolors="none", edgecolors="black", zorder=5,
                   label=f"best mean ({mean_y[j]:.3f}, epoch {mean_x[j]:g})")
    name = {"dice": "Dice", "hd95": "HD95"}.get(metric, metric)
    if metric == "dice":
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel(f"validation {name}" + (" (lower is better)" if lower else " (higher is better)"))
    ax.set_title(f"Validation {name} per region")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    return _save(fig, Path(path))


# distance metrics that BraTS conventions set to a fixed penalty (legacy 373.13, lesion-wise 374)
PENALISED = ("hd95", "assd", "lw_hd95", "hd95_lesionwise")
PENALTY_MIN = 373.0


def _fold_penalties(ax: Any, data: Sequence[Sequence[float]], pos: Sequence[int]) -> None:
    """Mark penalty values (≥ :data:`PENALTY_MIN`) as triangles at the top of ``ax`` with their count."""
    counts = [sum(1 for v in d if v >= PENALTY_MIN) for d in data]
    if not any(counts):
        return
    lo, hi = ax.get_ylim()
    finite = [v for d in data for v in d if v < PENALTY_MIN]
    top = max(finite) * 1.15 if finite and max(finite) > 0 else 1.0
    ax.set_ylim(min(lo, 0), top * 1.12)
    for n, p in zip(counts, pos):
        if n:
            ax.scatter([p], [top * 1.04], marker="^", s=40, color="black", zorder=4, clip_on=False)
            ax.annotate(f"{n}× penalty", (p, top * 1.04), textcoords="offset points", xytext=(-7, -3), fontsize=7,
                        ha="right")
    ax.axhline(top, color="#999999", lw=0.8, ls=":")
    ax.text(0.01, 0.99, f"▲ = BraTS penalty (≥ {PENALTY_MIN:g}), off scale", transform=ax.transAxes,
            fontsize=7, va="top", color="#555555")


def plot_boxes(ev: EvalData, path: str | Path, metrics: Sequence[str] = ("dice", "hd95"),
               units: str = "voxels") -> Path | None:
    """Box plots of the per-case scores per region/class, one panel per metric, every case as a dot.

    Boxes: median and quartiles; whiskers 1.5 IQR. BraTS penalty distances (373.13 / 374 for a
    region missed or predicted on empty ground truth) are left out of the boxes and marked at the
    top of the panel with their count. Returns ``None`` when none of ``metrics`` exists.
    """
    metrics = [m for m in metrics if m in ev.metrics]
    if not metrics or not ev.labels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 0.6, 3.8), squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice gives the same picture
    for ax, m in zip(axes[0], metrics):
        data = [ev.values(label, m) for label in ev.labels]
        pos = list(range(1, len(ev.labels) + 1))
        # BraTS penalty distances (373.13 / 374) would squash every box to the bottom: the boxes
        # are drawn from the other values and the penalties are marked at the top edge
        clean = [[v for v in d if not (m in PENALISED and v >= PENALTY_MIN)] for d in data]
        shown = [d if d else [np.nan] for d in clean]
        bp = ax.boxplot(shown, positions=pos, widths=0.55, patch_artist=True, showfliers=False,
                        medianprops={"color": "black", "lw": 1.5})
        for i, (patch, label) in enumerate(zip(bp["boxes"], ev.labels)):
            patch.set_facecolor(colour(label, i))
            patch.set_alpha(0.35)
        for i, (d, p, label) in enumerate(zip(clean, pos, ev.labels)):
            if d:
                ax.scatter(p + rng.uniform(-0.13, 0.13, len(d)), d, s=14, color=colour(label, i),
                           edgecolors="black", linewidths=0.4, zorder=3)
        if m in PENALISED:
            _fold_penalties(ax, data, pos)
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{label}\n(n={len(d)})" for label, d in zip(ev.labels, data)])
        name = {"dice": "Dice", "hd95": f"HD95 ({units})"}.get(m, m)
        better = "lower" if m in LOWER_IS_BETTER else "higher"
        ax.set_title(f"{name} per case ({better} is better)", fontsize=10)
        if m == "dice":
            ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))
