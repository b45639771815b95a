"""Evaluate a folder of predicted label maps against reference label maps (``attnseg evaluate``).

Matching: predictions are ``PRED/<case_id>.nii.gz`` (``*_probs`` files are ignored);
references are found by case id either in a BraTS-style dataset folder
(``REF/<case_id>/<case_id>_seg.nii.gz`` or ``-seg``) or in a flat folder of label files
(``REF/<case_id>.nii.gz`` or ``REF/<case_id>_seg.nii.gz``, also other image suffixes).

Modes: ``regions="brats"`` scores the overlapping regions ET, TC, WT (label convention
detected per case from the values: 4 present → 0/1/2/4, 3 present → 0/1/2/3); ``"labels"``
scores every label value present in either map (or the given ``labels``) one-vs-rest.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.metrics.brats import REGIONS, binary_scores, lesion_wise_scores

__all__ = ["SUMMARY_METRICS", "evaluate_case", "evaluate_folders", "find_pairs", "summarize", "write_outputs"]

SUMMARY_METRICS = ("dice", "hd95", "jaccard", "sensitivity", "specificity", "assd", "volume_diff",
                   "lesion_dice", "lesion_hd95")


def _stem(name: str) -> str:
    from attnseg.data.io import strip_suffix

    return strip_suffix(name)


def _label_files(folder: Path) -> dict[str, Path]:
    from attnseg.data.io import is_image_file

    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and is_image_file(f):
            stem = _stem(f.name)
            if stem.endswith("_probs"):
                continue
            for suf in ("_seg", "-seg", "_label", "_mask", "_gt"):
                if stem.endswith(suf):
                    stem = stem[: -len(suf)]
                    break
            out[stem] = f
        elif f.is_dir():
            seg = [g for g in f.iterdir() if g.is_file() and is_image_file(g)
                   and _stem(g.name).lower().endswith(("_seg", "-seg"))]
            if seg:
                out[f.name] = seg[0]
    return out


def find_pairs(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> tuple[list[tuple[str, Path, Path]],
                                                                                  list[str], list[str]]:
    """``(pairs, predictions without reference, references without prediction)``, by case id."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: {what} folder not found")
    preds = {k: v for k, v in _label_files(pred_dir).items() if v.parent == pred_dir}
    refs = _label_files(ref_dir)
    pairs = [(cid, preds[cid], refs[cid]) for cid in sorted(preds) if cid in refs]
    return pairs, sorted(set(preds) - set(refs)), sorted(set(refs) - set(preds))


def _convention(values: set[int], where: str) -> str:
    if 4 in values and 3 in values:
        raise ValueError(f"{where}: labels contain both 3 and 4; not a BraTS label map of one convention")
    bad = values - {0, 1, 2, 3, 4}
    if bad:
        raise ValueError(f"{where}: label values {sorted(bad)} are not BraTS labels (0, 1, 2, 3/4)")
    return "brats2023" if 3 in values else "brats2020"


def evaluate_case(pred: np.ndarray, ref: np.ndarray, *, regions: str = "brats", labels: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None, hd_method: str = "monai", empty: str = "brats",
                  lesion_wise: bool = False, where: str = "case") -> list[dict[str, Any]]:
    """Rows ``{region, dice, hd95, ...}`` for one pair of integer label maps of equal shape."""
    from attnseg.data.labels import brats_to_regions

    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"{where}: prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if regions == "brats":
        conv = _convention(set(np.unique(pred).tolist()) | set(np.unique(ref).tolist()), where)
        masks = [(name, p, r) for name, p, r in zip(REGIONS, brats_to_regions(pred, conv), brats_to_regions(ref, conv))]
    elif regions == "labels":
        vals = labels if labels else sorted((set(np.unique(ref).tolist()) | set(np.unique(pred).tolist())) - {0})
        masks = [(str(v), pred == v, ref == v) for v in vals]
    else:
        raise ValueError(f"regions must be 'brats' or 'labels', got {regions!r}")
    rows = []
    for name, p, r in masks:
        row: dict[str, Any] = {"region": name, **binary_scores(p, r, spacing, empty=empty, hd_method=hd_method)}
        if lesion_wise:
            lw = lesion_wise_scores(p, r, spacing, hd_method=hd_method)
            row.update(lesion_dice=lw["dice"], lesion_hd95=lw["hd95"], ref_lesions=lw["ref_lesions"],
                       fp_lesions=lw["fp_lesions"])
        rows.append(row)
    return rows


def _evaluate_pair(args: tuple) -> list[dict[str, Any]]:
    from attnseg.data.io import load_image, spacing_from_affine

    cid, pp, rp, kw, spacing_aware = args
    pred, paff, _ = load_image(pp)
    ref, raff, _ = load_image(rp)
    for arr, path in ((pred, pp), (ref, rp)):
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ValueError(f"{path}: not a label map (non-integer values)")
    if pred.shape == ref.shape and not np.allclose(paff, raff, atol=1e-3):
        raise ValueError(f"{pp}: affine differs from the reference {rp} (max difference "
                         f"{np.abs(paff - raff).max():.3g}); the maps are not in the same space")
    spacing = spacing_from_affine(raff)[: ref.ndim] if spacing_aware else None
    rows = evaluate_case(np.rint(pred).astype(np.int16), np.rint(ref).astype(np.int16), spacing=spacing,
                         where=str(pp), **kw)
    return [{"case_id": cid, **r} for r in rows]


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, *, regions: str = "brats",
                     labels: Sequence[int] | None = None, spacing_aware: bool = False, hd_method: str = "monai",
                     empty: str = "brats", lesion_wise: bool = False, workers: int = 1,
                     strict: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every matched case. Returns ``(rows, info)``: one row per case and region, and
    ``info`` with the unmatched case ids. ``strict``: a prediction without a reference is an error."""
    pairs, no_ref, no_pred = find_pairs(pred_dir, ref_dir)
    if strict and no_ref:
        raise ValueError(f"{pred_dir}: predictions without a reference: {', '.join(no_ref[:10])}")
    if not pairs:
        raise ValueError(f"no case ids in common between {pred_dir} and {ref_dir}")
    kw = {"regions": regions, "labels": labels, "hd_method": hd_method, "empty": empty, "lesion_wise": lesion_wise}
    jobs = [(cid, pp, rp, kw, spacing_aware) for cid, pp, rp in pairs]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_evaluate_pair, jobs))
    else:
        results = [_evaluate_pair(j) for j in jobs]
    rows = [r for rs in results for r in rs]
    units = "mm" if spacing_aware else "voxels"
    return rows, {"cases": len(pairs), "predictions_without_reference": no_ref,
                  "references_without_prediction": no_pred, "distance_units": units, "hd_method": hd_method,
                  "empty_rule": empty, "regions": regions}


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "median": float("nan"),
                "q1": float("nan"), "q3": float("nan"), "min": float("nan"), "max": float("nan")}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(med),
            "q1": float(q1), "q3": float(q3), "min": float(v.min()), "max": float(v.max())}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{region: {metric: {n, mean, std, median, q1, q3, min, max}}}`` plus region ``"mean"``
    (per-case mean over regions, then statistics over cases). NaNs are skipped (count in ``n``)."""
    regions = list(dict.fromkeys(r["region"] for r in rows))
    metrics = [m for m in SUMMARY_METRICS if any(m in r for r in rows)]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for reg in regions:
        sel = [r for r in rows if r["region"] == reg]
        out[reg] = {m: _stats([r.get(m) for r in sel]) for m in metrics}
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], []).append(r)
    means = []
    for rs in by_case.values():
        d = {}
        for m in metrics:
            vals = [x.get(m) for x in rs if x.get(m) is not None and not math.isnan(x.get(m))]
            d[m] = float(np.mean(vals)) if vals else float("nan")
        means.append(d)
    out["mean"] = {m: _stats([d[m] for d in means]) for m in metrics}
    return out


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def write_outputs(rows: Sequence[dict[str, Any]], summary: dict[str, Any], info: dict[str, Any],
                  out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` to ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    paths = {"per_case": out / "per_case.csv", "summary_json": out / "summary.json", "summary_md": out / "summary.md"}

    def atomic(path: Path, write) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            write(fh)
        os.replace(tmp, path)

    def w_csv(fh):
        wr = csv.DictWriter(fh, fieldnames=cols)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (_fmt(v, 6) if isinstance(v, float) else v) for k, v in r.items()})

    atomic(paths["per_case"], w_csv)
    atomic(paths["summary_json"], lambda fh: json.dump({"info": info, "summary": summary}, fh, indent=2,
                                                       allow_nan=True))
    units = info.get("distance_units", "voxels")
    metrics = [m for m in ("dice", "hd95", "assd", "sensitivity", "specificity", "jaccard", "lesion_dice",
                           "lesion_hd95") if any(m in s for s in summary.values())]
    head = ["region"] + [f"{m} ({units})" if m in ("hd95", "assd", "lesion_hd95") else m for m in metrics]
    lines = [f"Evaluation of {info.get('cases')} case(s); HD95 definition: {info.get('hd_method')}; empty-region "
             f"rule: {info.get('empty_rule')}; cells: mean ± std (median)", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for reg, s in summary.items():
        cells = [reg] + [f"{_fmt(s[m]['mean'])} ± {_fmt(s[m]['std'])} ({_fmt(s[m]['median'])})" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    for key, label in (("predictions_without_reference", "predictions without reference"),
                       ("references_without_prediction", "references without prediction")):
        if info.get(key):
            lines += ["", f"{len(info[key])} {label}: {', '.join(info[key][:20])}"]
    atomic(paths["summary_md"], lambda fh: fh.write("\n".join(lines) + "\n"))
    return paths
