"""Statistics of a seeded ablation (``attnseg ablate --seeds N --test-data DIR``).

Each cell (backbone, attention) is trained with N seeds on the same split and scored on the
same held-out cases. For a metric (e.g. ``dice_mean``, ``dice_ET``, ``hd95_WT``):

* **cell**: per-seed mean over cases -> mean ± sd over seeds; the per-case score averaged over
  seeds -> a 95 % percentile-bootstrap CI of the mean over cases (cases resampled);
* **paired comparison** of an attention module with the same backbone without attention: the
  per-case differences (each side averaged over seeds), their mean, a 95 % bootstrap CI
  (seeds of each side resampled, then the cases: seed noise widens it; cases only with one
  seed), the Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, two-sided) over cases and
  the Holm-adjusted p-value over all comparisons of that metric. A module is called better or
  worse only when the adjusted p < 0.05 *and* the CI excludes 0.

The unit of resampling is the case because the cases are the sample the conclusion is about;
the seeds are averaged per case first so that seed noise shrinks the differences' spread
instead of being counted as independent cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from attnseg.runtime.optional import pyplot

# per-case scores of one cell: {seed: {case_id: {metric: value}}}
PerCase = Mapping[int, Mapping[str, Mapping[str, float]]]


def bootstrap_ci(values: Sequence[float], n_boot: int = 10000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap ``(lo, hi)`` of the mean of ``values`` (resampled with replacement).

    NaNs are dropped; fewer than 2 values give ``(mean, mean)`` (nan when empty)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN and
    do not count towards the number of tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (``scipy.stats.wilcoxon``).

    All-zero (or no) differences: 1.0 (no evidence of a difference); NaNs are dropped."""
    d = np.asarray([v for v in diffs if v is not None and math.isfinite(v)], dtype=np.float64)
    if d.size == 0 or not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative="two-sided").pvalue)


def case_means(per_case: PerCase, metric: str) -> dict[str, float]:
    """Per case, the mean over seeds of ``metric`` (cases missing in a seed use the seeds that have them)."""
    acc: dict[str, list[float]] = {}
    for scores in per_case.values():
        for case, m in scores.items():
            v = m.get(metric)
            if v is not None and math.isfinite(v):
                acc.setdefault(case, []).append(float(v))
    return {c: float(np.mean(v)) for c, v in sorted(acc.items())}


def cell_stats(per_case: PerCase, metric: str, n_boot: int = 10000, seed: int = 0) -> dict[str, float]:
    """``{mean, sd, lo, hi, n_seeds, n_cases}`` of one cell for ``metric``.

    ``mean``: grand mean (mean over seeds of the per-seed case means); ``sd``: standard deviation
    (ddof 1) of the per-seed case means, 0 with one seed; ``lo, hi``: bootstrap CI over cases of the
    seed-averaged per-case scores."""
    seed_means = []
    for scores in per_case.values():
        vals = [m[metric] for m in scores.values() if m.get(metric) is not None and math.isfinite(m[metric])]
        if vals:
            seed_means.append(float(np.mean(vals)))
    cm = case_means(per_case, metric)
    lo, hi = bootstrap_ci(list(cm.values()), n_boot=n_boot, seed=seed)
    return {"mean": float(np.mean(seed_means)) if seed_means else math.nan,
            "sd": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else 0.0,
            "lo": lo, "hi": hi, "n_seeds": len(seed_means), "n_cases": len(cm)}


def _seed_matrix(per_case: PerCase, metric: str, cases: Sequence[str]) -> np.ndarray | None:
    """(seeds, cases) scores when every seed scored every case, else None."""
    rows = []
    for scores in per_case.values():
        row = [scores.get(c, {}).get(metric) for c in cases]
        if any(v is None or not math.isfinite(v) for v in row):
            return None
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def hierarchical_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, alpha: float = 0.05,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of mean(a) − mean(b) for paired cases with several seeds per side:
    ``a`` ``(S_a, N)``, ``b`` ``(S_b, N)``. Each resample draws the seeds of each side with
    replacement, averages them per case, then draws the cases (the same for both sides: paired),
    so seed-to-seed variation widens the interval."""
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    sa = rng.integers(0, a.shape[0], (n_boot, a.shape[0]))
    sb = rng.integers(0, b.shape[0], (n_boot, b.shape[0]))
    d = a[sa].mean(axis=1) - b[sb].mean(axis=1)  # (n_boot, N)
    idx = rng.integers(0, n, (n_boot, n))
    means = np.take_along_axis(d, idx, axis=1).mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired(treated: PerCase, control: PerCase, metric: str, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison on the cases both cells scored: ``{diff, lo, hi, p, n, wins, losses}``.

    ``diff`` = treated − control, the mean over cases of the seed-averaged per-case differences;
    ``lo, hi``: with ≥ 2 seeds on both sides the hierarchical bootstrap (:func:`hierarchical_ci`:
    seeds, then cases), else the bootstrap over cases; ``p``: Wilcoxon signed-rank over cases of
    the seed-averaged differences; ``wins``/``losses``: cases with a positive/negative difference."""
    a, b = case_means(treated, metric), case_means(control, metric)
    common = sorted(set(a) & set(b))
    d = [a[c] - b[c] for c in common]
    ma, mb = _seed_matrix(treated, metric, common), _seed_matrix(control, metric, common)
    if common and ma is not None and mb is not None and min(len(ma), len(mb)) >= 2:
        lo, hi = hierarchical_ci(ma, mb, n_boot=n_boot, seed=seed)
    else:
        lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return {"diff": float(np.mean(d)) if d else math.nan, "lo": lo, "hi": hi, "p": wilcoxon_p(d),
            "n": len(d), "wins": int(sum(v > 0 for v in d)), "losses": int(sum(v < 0 for v in d))}


def compare_to_none(cells: Mapping[tuple[str, str], PerCase], metric: str, n_boot: int = 10000,
                    seed: int = 0, higher_is_better: bool = True) -> list[dict[str, Any]]:
    """Every (backbone, attention ≠ none) against (backbone, none), Holm-adjusted over the list.

    Rows: ``backbone, attention, metric, diff, lo, hi, p, p_holm, n, wins, losses, verdict``.
    ``verdict``: ``better``/``worse`` when the Holm-adjusted p < 0.05 and the bootstrap CI excludes
    0 (in the metric's good direction), else ``no detectable difference``."""
    rows = []
    for (bb, att), pc in sorted(cells.items()):
        if att == "none" or (bb, "none") not in cells:
            continue
        rows.append({"backbone": bb, "attention": att, "metric": metric,
                     **paired(pc, cells[(bb, "none")], metric, n_boot=n_boot, seed=seed)})
    for r, ph in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = ph
        sig = ph < 0.05 and (r["lo"] > 0 or r["hi"] < 0)
        good = (r["diff"] > 0) == higher_is_better
        r["verdict"] = ("better" if good else "worse") if sig else "no detectable difference"
    return rows


def forest_plot(rows: Sequence[Mapping[str, Any]], path: str | Path, xlabel: str) -> Path:
    """Forest plot: one line per comparison, the mean paired difference and its 95 % CI."""
    plt = pyplot("the forest plot")  # optional: the [report] extra

    n = len(rows)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * n + 1.2))
    ys = np.arange(n)[::-1]
    for y, r in zip(ys, rows):
        colour = {"better": "#2ca02c", "worse": "#d62728"}.get(str(r.get("verdict")), "#333333")
        ax.plot([r["lo"], r["hi"]], [y, y], color=colour, lw=2)
        ax.plot([r["diff"]], [y], "s", color=colour, ms=7)
        ax.text(1.02, y, f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]  p_Holm {r['p_holm']:.2g}",
                transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.axvline(0, color="grey", ls="--", lw=1)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r['backbone']} + {r['attention']}" for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_title("attention vs the same backbone without (paired, per case; 95 % bootstrap CI)", fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out
