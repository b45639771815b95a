"""``attnseg report``: one HTML page (plus a Markdown twin) describing a finished run.

Sections: summary (model, data, training time, best validation score), training curves,
test-set metric table, box plots per region/class, overlays of the best, median and worst
cases, per-case table, environment and configuration. Figures are PNG files next to the page
(``index.html`` and ``report.md`` reference them); ``report_standalone.html`` embeds them as
base64 data URIs so that a single file can be mailed or attached.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnseg.data.readers import find_cases
from attnseg.models import count_parameters
from attnseg.models.checkpoint import build_model_from_checkpoint
from attnseg.report import figures as F
from attnseg.report.overlays import find_prediction, load_overlay_case, plot_overlay, score_line
from attnseg.report.rundata import (
    LOWER_IS_BETTER,
    EvalData,
    RunData,
    describe,
    read_eval,
    read_run,
)
from attnseg.report.slice_weights import report_slice_weights
from attnseg.report.viewer import viewer_cases_section

_METRIC_NAMES = {"dice": "Dice", "hd95": "HD95", "jaccard": "Jaccard", "sensitivity": "Sensitivity",
                 "specificity": "Specificity", "assd": "ASSD", "volume_diff": "Volume diff.",
                 "volume_difference": "Volume diff."}


@dataclass
class Figure:
    """A picture of the report: file name relative to the report folder, caption, alt text."""

    file: str
    caption: str
    alt: str


@dataclass
class ReportResult:
    """Paths written by :func:`build_report` and what was left out, with reasons."""

    out_dir: Path
    html: Path
    markdown: Path
    standalone: Path | None
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _metric_name(m: str, units: str) -> str:
    name = _METRIC_NAMES.get(m, m)
    if m in ("hd95", "assd"):
        name += f" ({units})"
    return name


# ------------------------------------------------------------------------------------ content
def _summary_rows(run: RunData, ev: EvalData | None, params: int | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("Run folder", str(run.path.resolve()))]
    if run.model_name:
        kwargs = (run.config.get("model") or {}).get("kwargs") if isinstance(run.config.get("model"), dict) else None
        extra = f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else ""
        rows.append(("Model", f"{run.model_name}{extra}"))
    if params is not None:
        rows.append(("Parameters", f"{params:,}"))
    task = run.config.get("task") if isinstance(run.config.get("task"), dict) else {}
    if task:
        names = ", ".join(task.get("channel_names") or []) or str(task.get("in_channels", "?"))
        rows.append(("Task", f"{task.get('kind', '?')}, {task.get('num_classes', '?')} output channels, "
                             f"inputs: {names}"))
    data = run.config.get("data") if isinstance(run.config.get("data"), dict) else {}
    if data.get("root"):
        rows.append(("Training data", f"{data['root']} (patch {data.get('patch_size', '?')})"))
    if run.metrics:
        last = run.metrics[-1]
        secs = sum(float(r["time_s"]) for r in run.metrics if isinstance(r.get("time_s"), (int, float)))
        ep, it = last.get("epoch", "?"), last.get("iteration")
        rows.append(("Training", f"{ep} epoch{'' if ep == 1 else 's'}, {_fmt(it)} iteration{'' if it == 1 else 's'}"
                                 + (f", {secs / 60:.1f} min" if secs else "")))
        vals = [(r["epoch"], r["val_dice_mean"]) for r in run.metrics
                if isinstance(r.get("val_dice_mean"), (int, float)) and math.isfinite(r["val_dice_mean"])]
        if vals:
            e, v = max(vals, key=lambda t: t[1])
            rows.append(("Best validation Dice (mean)", f"{v:.3f} at epoch {e}"))
    if ev is not None:
        rows.append(("Evaluated cases", f"{len(ev.case_ids)} (from {ev.path})"))
        for m in ("dice", "hd95"):
            if m in ev.metrics:
                means = [(label, describe(ev.values(label, m))["mean"]) for label in ev.labels]
                rows.append((f"Test {_METRIC_NAMES[m]} (mean over cases)",
                             " · ".join(f"{label} {_fmt(v)}" for label, v in means)))
    if run.checkpoint is not None:
        rows.append(("Checkpoint", str(run.checkpoint)))
    return rows


def _metric_table(ev: EvalData, units: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per region/class; per metric mean ± std and median [IQR]."""
    shown = [m for m in ev.metrics if m in ("dice", "hd95")] or ev.metrics[:2]
    header = ["Region / class", "n"]
    for m in shown:
        arrow = "↓" if m in LOWER_IS_BETTER else "↑"
        header += [f"{_metric_name(m, units)} {arrow} mean ± std", f"{_metric_name(m, units)} median [Q1, Q3]"]
    rows = []
    for label in ev.labels:
        stats = {m: describe(ev.values(label, m)) for m in shown}
        n = max((s["n"] for s in stats.values()), default=0)
        row = [label, str(n)]
        for m in shown:
            s = stats[m]
            row += [f"{_fmt(s['mean'])} ± {_fmt(s['std'])}" if s["n"] else "–",
                    f"{_fmt(s['median'])} [{_fmt(s['q1'])}, {_fmt(s['q3'])}]" if s["n"] else "–"]
        rows.append(row)
    if len(ev.labels) > 1:  # mean over regions per case, then statistics over cases
        row = ["mean of regions", str(len(ev.case_ids))]
        for m in shown:
            per_case = [ev.case_mean(c, m) for c in ev.case_ids]
            s = describe([v for v in per_case if v is not None])
            row += [f"{_fmt(s['mean'])} ± {_fmt(s['std'])}" if s["n"] else "–",
                    f"{_fmt(s['median'])} [{_fmt(s['q1'])}, {_fmt(s['q3'])}]" if s["n"] else "–"]
        rows.append(row)
    return header, rows


def _other_metrics_table(ev: EvalData, units: str) -> tuple[list[str], list[list[str]]] | None:
    # voxel counts (ref_voxels, pred_voxels) are context, not metrics
    others = [m for m in ev.metrics if m not in ("dice", "hd95") and not m.endswith("_voxels")]
    if not others:
        return None
    header = ["Region / class"] + [f"{_metric_name(m, units)} (mean)" for m in others]
    rows = [[label] + [_fmt(describe(ev.values(label, m))["mean"]) for m in others] for label in ev.labels]
    return header, rows


# ------------------------------------------------------------------------------------ rendering
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:26px;margin:4px 0 2px}
h2{font-size:20px;margin:34px 0 8px;padding-bottom:4px;border-bottom:2px solid #e4e6ea}
h3{font-size:16px;margin:20px 0 6px}.sub{color:#666;margin:0 0 14px}
nav{font-size:14px;margin:10px 0 0}nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 6px;font-size:14px}
th,td{padding:5px 10px;border-bottom:1px solid #e4e6ea;text-align:right;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}td:first-child,th:first-child{text-align:left}
table.kv td{text-align:left;white-space:normal}table.kv td:first-child{color:#555;width:230px}
tr.total td{font-weight:600;border-top:2px solid #c9ccd1}
tr.pick td{background:#fff8e1}
figure{margin:12px 0 22px}figure img{max-width:100%;border:1px solid #e4e6ea}
figcaption{font-size:13px;color:#555;margin-top:4px;max-width:1000px}
.note{background:#fff4e5;border-left:4px solid #f0a030;padding:8px 12px;font-size:14px;margin:10px 0}
.help{font-size:13px;color:#555;max-width:1000px}
details{margin:10px 0}summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:10px;font-size:12px;overflow:auto;max-height:480px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _html_table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _img_tag(fig: Figure, base: Path, embed: bool) -> str:
    if embed:
        data = base64.b64encode((base / fig.file).read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        src = fig.file
    return (f'<figure><img src="{_esc(src)}" alt="{_esc(fig.alt)}">'
            f"<figcaption>{_esc(fig.caption)}</figcaption></figure>")


@dataclass
class _Page:
    title: str
    subtitle: str
    sections: list[tuple[str, str, list[Any]]] = field(default_factory=list)  # (id, heading, blocks)

    def add(self, sid: str, heading: str, *blocks: Any) -> None:
        self.sections.append((sid, heading, list(blocks)))


# blocks: ("p", text) | ("note", text) | ("table", header, rows, classes) | ("kv", rows) | ("fig", Figure)
#         ("details", summary, blocks) | ("pre", text) | ("h3", text) | ("help", text)
def _render_html(page: _Page, base: Path, embed: bool) -> str:
    def block(b: Any) -> str:
        kind = b[0]
        if kind == "p":
            return f"<p>{_esc(b[1])}</p>"
        if kind == "help":
            return f'<p class="help">{_esc(b[1])}</p>'
        if kind == "note":
            return f'<div class="note">{_esc(b[1])}</div>'
        if kind == "h3":
            return f"<h3>{_esc(b[1])}</h3>"
        if kind == "table":
            return _html_table(b[1], b[2], b[3] if len(b) > 3 else None)
        if kind == "kv":
            return '<table class="kv"><tbody>' + "".join(
                f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in b[1]) + "</tbody></table>"
        if kind == "fig":
            return _img_tag(b[1], base, embed)
        if kind == "details":
            is_open = " open" if len(b) > 3 and b[3] else ""
            return (f"<details{is_open}><summary>{_esc(b[1])}</summary>" + "".join(block(x) for x in b[2])
                    + "</details>")
        if kind == "pre":
            return f"<pre>{_esc(b[1])}</pre>"
        if kind == "viewer":  # attnseg.report.viewer.CasesSection
            return b[1].html(embed)
        raise ValueError(f"unknown block {kind!r}")

    nav = "".join(f'<a href="#{sid}">{_esc(h)}</a>' for sid, h, _ in page.sections)
    body = [f"<h1>{_esc(page.title)}</h1>", f'<p class="sub">{_esc(page.subtitle)}</p>', f"<nav>{nav}</nav>"]
    for sid, heading, blocks in page.sections:
        body.append(f'<section id="{sid}"><h2>{_esc(heading)}</h2>' + "".join(block(b) for b in blocks)
                    + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(page.title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


def _render_md(page: _Page) -> str:
    def block(b: Any) -> str:
        kind = b[0]
        if kind in ("p", "help"):
            return b[1] + "\n"
        if kind == "note":
            return f"> **Note:** {b[1]}\n"
        if kind == "h3":
            return f"### {b[1]}\n"
        if kind == "table":
            return _md_table(b[1], b[2])
        if kind == "kv":
            return _md_table(["", ""], [[k, v] for k, v in b[1]])
        if kind == "fig":
            return f"![{b[1].alt}]({b[1].file})\n\n*{b[1].caption}*\n"
        if kind == "details":
            return f"<details><summary>{b[1]}</summary>\n\n" + "\n".join(block(x) for x in b[2]) + "\n</details>\n"
        if kind == "pre":
            return "```\n" + b[1].rstrip("\n") + "\n```\n"
        if kind == "viewer":
            return b[1].markdown()
        raise ValueError(f"unknown block {kind!r}")

    parts = [f"# {page.title}\n", f"{page.subtitle}\n"]
    for _sid, heading, blocks in page.sections:
        parts.append(f"## {heading}\n")
        parts += [block(b) for b in blocks]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ building
def _count_params(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    try:
        model, _ = build_model_from_checkpoint(checkpoint)
        return count_parameters(model)
    except Exception:  # an unreadable checkpoint must not stop the report; the count is optional
        return None


def _default_dir(run: Path, explicit: str | Path | None, names: tuple[str, ...]) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    for n in names:
        if (run / n).is_dir():
            return run / n
    return None


def _info(ev: EvalData, *keys: str) -> Any:
    """First of ``keys`` found in summary.json, at the top level or under ``info``
    (``attnseg evaluate`` writes ``{"info": {...}, "summary": {...}}``)."""
    info = ev.summary.get("info") if isinstance(ev.summary.get("info"), dict) else {}
    for k in keys:
        for d in (ev.summary, info):
            if k in d and d[k] is not None:
                return d[k]
    return None


def _units(ev: EvalData) -> str:
    flag = _info(ev, "distance_units", "spacing_aware", "units")
    if flag in (True, "mm"):
        return "mm"
    return "voxels" if flag in (False, None, "voxels", "voxel") else str(flag)


def _overlays(ev: EvalData, picks: dict[str, tuple[str, float]], pred_dir: Path | None, data_dir: Path | None,
              out: Path, task_kind: str | None, notes: list[str], subset: str = "Tr") -> list[tuple[str, Figure]]:
    if not picks:
        return []
    if pred_dir is None or not pred_dir.is_dir():
        notes.append("overlays left out: no prediction folder (pass --pred, or keep RUN_DIR/predictions)"
                     if pred_dir is None else f"overlays left out: prediction folder {pred_dir} not found")
        return []
    if data_dir is None or not Path(data_dir).exists():
        notes.append("overlays left out: no dataset folder with the images and ground truth (pass --data)"
                     if data_dir is None else f"overlays left out: dataset folder {data_dir} not found")
        return []

    try:
        cases = {c.case_id: c for c in find_cases(data_dir, require_labels=False, subset=subset)}
    except ValueError as exc:
        notes.append(f"overlays left out: {exc}")
        return []
    regions = None if task_kind is None else task_kind == "brats-regions"
    figs = []
    descr = {"best": "highest", "median": "median", "worst": "lowest"}
    for tag, (cid, mean) in picks.items():
        case = cases.get(cid)
        pred = find_prediction(pred_dir, cid)
        if case is None or pred is None:
            missing = f"case {cid!r} not in {data_dir}" if case is None else f"no {cid}.nii.gz in {pred_dir}"
            notes.append(f"{tag} case overlay left out: {missing}")
            continue
        try:
            oc = load_overlay_case(case, pred, regions, _info(ev, "label_names"))
        except ValueError as exc:
            notes.append(f"{tag} case overlay left out: {exc}")
            continue
        scores = ev.case_scores(cid, "dice") if "dice" in ev.metrics else {}
        title = f"{tag} case: {cid}   ({score_line({k: scores[k] for k in ev.labels if k in scores})})"
        path = plot_overlay(oc, out / f"overlay_{tag}.png", title)
        figs.append((tag, Figure(path.name, f"{tag.capitalize()} case {cid}: {descr[tag]} mean Dice "
                                            f"({mean:.3f}) of the {len(ev.case_ids)} evaluated cases. "
                                            "Top row: ground truth; bottom row: prediction (same slices).",
                                 f"{tag} case overlay")))
    return figs


def build_report(run_dir: str | Path, eval_dir: str | Path | None = None, pred_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, out_dir: str | Path | None = None,
                 standalone: bool = True, title: str | None = None) -> ReportResult:
    """Write ``index.html``, ``report.md`` and PNG figures for a run folder into ``out_dir``.

    Args:
        run_dir: folder written by ``attnseg train`` (metrics.csv, config.yaml, env.json, checkpoints/).
        eval_dir: output of ``attnseg evaluate`` (default: ``RUN_DIR/eval`` or ``RUN_DIR/evaluation``
            if present). Without it the metric table, box plots and overlays are left out (noted on the page).
        pred_dir: predictions ``<case_id>.nii.gz`` (default: ``RUN_DIR/predictions`` or the ``pred``
            path recorded in ``summary.json``).
        data_dir: dataset with images and ground truth for the overlays (default: the ``ref`` path in
            ``summary.json``, else ``data.root`` of the run's config).
        out_dir: default ``RUN_DIR/report``.
        standalone: also write ``report_standalone.html`` with the images embedded.

    Raises ``FileNotFoundError``/``ValueError`` naming the file for a missing or malformed input.
    """
    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes = list(run.notes)
    ev_dir = _default_dir(run.path, eval_dir, ("eval", "evaluation", "predictions_evaluation"))
    ev = read_eval(ev_dir) if ev_dir is not None else None
    if ev is None:
        notes.append("no evaluation folder: metric table, box plots and overlays are left out "
                     "(run `attnseg evaluate` and pass --eval)")
    if pred_dir is None and ev is not None and isinstance(_info(ev, "pred", "pred_dir"), str):
        pred_dir = _info(ev, "pred", "pred_dir")
    pdir = _default_dir(run.path, pred_dir, ("predictions", "pred"))
    subset = "Tr"
    if data_dir is None and ev is not None and isinstance(_info(ev, "data"), str):
        # the dataset the reference labels belong to (e.g. an nnU-Net root + Ts for labelsTs)
        data_dir, subset = _info(ev, "data"), str(_info(ev, "subset") or "Tr")
    if data_dir is None and ev is not None and isinstance(_info(ev, "ref", "ref_dir"), str):
        data_dir = _info(ev, "ref", "ref_dir")
    ddir = Path(data_dir) if data_dir is not None else run.data_root()
    units = _units(ev) if ev is not None else "voxels"

    page = _Page(title or f"attnseg report: {run.name}",
                 f"{run.model_name or 'model'} · generated by attnseg report from {run.path.resolve()}")
    page.add("summary", "Summary", ("kv", _summary_rows(run, ev, _count_params(run.checkpoint))))

    written: list[Path] = []
    curve_blocks: list[Any] = []
    loss = F.plot_loss(run.metrics, out / "training_loss.png")
    if loss is not None:
        written.append(loss)
        curve_blocks.append(("fig", Figure(loss.name, "Training loss per epoch (mean over the epoch's iterations; "
                                           "thick line = total, thin lines = its parts) and the learning rate.",
                                           "training loss curve")))
    val = F.plot_validation(run.metrics, out / "validation_dice.png", "dice")
    if val is not None:
        written.append(val)
        curve_blocks.append(("fig", Figure(val.name, "Dice on the validation cases at each validation epoch, per "
                                           "region/class; dashed = mean; the circle marks the best mean.",
                                           "validation Dice curve")))
    hd = F.plot_validation(run.metrics, out / "validation_hd95.png", "hd95")
    if hd is not None:
        written.append(hd)
        curve_blocks.append(("fig", Figure(hd.name, "HD95 (voxels) on the validation cases; lower is better.",
                                           "validation HD95 curve")))
    if not curve_blocks:
        curve_blocks.append(("note", "no training curves: metrics.csv is missing or has no loss/validation values"))
    page.add("curves", "Training curves", *curve_blocks)

    picks: dict[str, tuple[str, float]] = {}
    if ev is not None:
        header, rows = _metric_table(ev, units)
        blocks: list[Any] = [
            ("help", f"{len(ev.case_ids)} cases from {ev.path}. Dice: 1 is perfect overlap; HD95: 95th percentile "
                     f"of the distances between the two surfaces, in {units}, 0 is perfect. ↑ higher is better, "
                     "↓ lower is better."),
            ("table", header, rows, ["total" if r[0] == "mean of regions" else "" for r in rows])]
        penalties = sum(1 for r in ev.rows if isinstance(r.get("hd95"), (int, float)) and r["hd95"] >= 373.0)
        if penalties:
            blocks.append(("note", f"{penalties} case/region value(s) of HD95 are the BraTS penalty (373.13: a region "
                                   "missed entirely, or predicted where the ground truth has none). They dominate "
                                   "the mean and std; the median [Q1, Q3] is the more representative figure."))
        other = _other_metrics_table(ev, units)
        if other is not None:
            blocks += [("h3", "Other metrics"), ("table", other[0], other[1])]
        page.add("metrics", "Test-set metrics", *blocks)
        box = F.plot_boxes(ev, out / "boxplots.png", units=units)
        if box is not None:
            written.append(box)
            page.add("boxplots", "Per-case distribution",
                     ("fig", Figure(box.name, "One dot per case; boxes show the median and quartiles, whiskers "
                                              "1.5× the interquartile range.", "box plots per region")))
        picks = ev.pick_cases("dice" if "dice" in ev.metrics else ev.metrics[0])
        figs = _overlays(ev, picks, pdir, ddir, out, run.task_kind, notes, subset)
        written += [out / f.file for _, f in figs]
        ov_blocks: list[Any] = [("help", "Cases ranked by their mean Dice over the regions/classes. Each picture "
                                         "shows three orthogonal slices through the lesion centre (the ground-truth "
                                         "voxel nearest to the centre of the largest region): ground-truth contours "
                                         "in the top row, predicted contours in the bottom row. Letters mark the "
                                         "patient's directions (L/R, A/P, S/I); the patient's right is on the "
                                         "right.")]
        ov_blocks += [("fig", f) for _, f in figs]
        ov_notes = [n for n in notes if "overlay" in n]
        ov_blocks += [("note", n) for n in ov_notes]
        page.add("overlays", "Best, median and worst cases", *ov_blocks)

        cases = viewer_cases_section(ev, picks, pdir, ddir, checkpoint=run.checkpoint)
        cases.write_files(out / "viewer")
        page.add("cases", "Cases", ("help", f"All {len(ev.case_ids)} cases, best first."), ("viewer", cases))

        # models with slice attention (PAM): slice-weight profile per level of the median case
        sw = report_slice_weights(run.checkpoint, ddir, [picks[k][0] for k in ("median", "best", "worst")
                                                         if k in picks], out)
        if sw is not None:
            written.append(sw[0])
            page.add("slice-weights", "Slice attention",
                     ("fig", Figure(sw[0].name, sw[1], "slice-weight profile per level next to the tumour extent")))
    else:
        page.add("metrics", "Test-set metrics", ("note", next(n for n in notes if n.startswith("no evaluation"))))

    env_blocks: list[Any] = []
    if run.env:
        keys = ("attnseg", "torch", "monai", "python", "numpy", "device", "torch_threads", "host", "platform",
                "git_commit")
        env_blocks.append(("kv", [(k, _fmt(run.env[k])) for k in keys if run.env.get(k) not in (None, "")]))
    if run.config:
        env_blocks.append(("details", "Resolved configuration (config.yaml)",
                           [("pre", yaml.safe_dump(run.config, sort_keys=False))]))
    # notes not already shown next to the overlays or instead of the metric table
    env_blocks += [("note", n) for n in notes if "overlay" not in n and not n.startswith("no evaluation folder")]
    if env_blocks:
        page.add("environment", "Environment and configuration", *env_blocks)

    html_path = out / "index.html"
    html_path.write_text(_render_html(page, out, embed=False), encoding="utf-8")
    md_path = out / "report.md"
    md_path.write_text(_render_md(page), encoding="utf-8")
    sa_path = None
    if standalone:
        sa_path = out / "report_standalone.html"
        sa_path.write_text(_render_html(page, out, embed=True), encoding="utf-8")
    return ReportResult(out, html_path, md_path, sa_path, written, notes)


def referenced_images(html_text: str) -> list[str]:
    """``src`` attributes of the ``<img>`` tags of a page (file names or data URIs)."""
    return [html.unescape(s) for s in re.findall(r'<img[^>]*\ssrc="([^"]+)"', html_text)]


def summary_json(result: ReportResult) -> str:
    return json.dumps({"html": str(result.html), "markdown": str(result.markdown),
                       "standalone": str(result.standalone) if result.standalone else None,
                       "figures": [str(p) for p in result.figures], "notes": result.notes}, indent=2)
