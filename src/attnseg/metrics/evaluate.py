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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.data.io import is_image_file, load_image, spacing_from_affine, strip_suffix
from attnseg.data.readers import detect_layout, label_names_from_json, read_dataset_json
from attnseg.metrics.brats import REGIONS, binary_scores, lesion_wise_scores
from attnseg.runtime.optional import require

__all__ = ["BRATS2024_CONFIGS", "SUMMARY_METRICS", "evaluate_brats2024", "evaluate_case", "evaluate_folders",
           "find_pairs", "summarize", "write_outputs"]

SUMMARY_METRICS = ("dice", "hd95", "jaccard", "sensitivity", "specificity", "assd", "volume_diff",
                   "lesion_dice", "lesion_hd95", "num_tp", "num_fp", "num_fn", "legacy_dice", "legacy_hd95")


def _stem(name: str) -> str:
    return strip_suffix(name)


def _label_files(folder: Path) -> dict[str, Path]:
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


def _values(label: np.ndarray) -> set[int]:
    """Label values present (one comparison per value for a few small integers, else np.unique)."""
    if label.size and label.dtype.kind in "iub":
        lo, hi = int(label.min()), int(label.max())
        if hi - lo < 16:
            return {v for v in range(lo, hi + 1) if v in (lo, hi) or (label == v).any()}
    return set(np.unique(label).tolist())


def _brats_regions(label: np.ndarray, convention: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ET, TC, WT) masks: ET = enhancing (3, or 4 in the 2020 convention), TC = ET ∪ necrosis (1),
    WT = TC ∪ oedema (2); the regions of ``attnseg.data.labels.brats_to_regions``, computed with
    three comparisons instead of a class map."""
    et = label == (4 if convention == "brats2020" else 3)
    tc = et | (label == 1)
    return et, tc, tc | (label == 2)


def _convention(values: set[int], where: str) -> str:
    if 4 in values and 3 in values:
        raise ValueError(f"{where}: labels contain both 3 and 4; not a BraTS label map of one convention")
    bad = values - {0, 1, 2, 3, 4}
    if bad:
        raise ValueError(f"{where}: label values {sorted(bad)} are not BraTS labels (0, 1, 2, 3/4)")
    return "brats2023" if 3 in values else "brats2020"


def evaluate_case(pred: np.ndarray, ref: np.ndarray, *, regions: str = "brats", labels: Sequence[int] | None = None,
                  spacing: Sequence[float] | None = None, hd_method: str = "monai", empty: str = "brats",
                  lesion_wise: bool = False, challenge: str = "GLI", lesion_spacing: Sequence[float] | None = None,
                  where: str = "case", label_names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Rows ``{region, dice, hd95, ...}`` for one pair of integer label maps of equal shape.

    ``lesion_wise`` adds the BraTS 2023 script's columns (``lesion_dice``, ``lesion_hd95``,
    ``num_tp``, ``num_fp``, ``num_fn``, ``legacy_dice``, ``legacy_hd95``, ``legacy_sensitivity``,
    ``legacy_specificity``) with the parameters of
    ``challenge``, computed with ``lesion_spacing`` (the script uses the prediction header's
    voxel sizes; default ``spacing``, else 1 mm) and a ``lesions`` list (the per-lesion table)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"{where}: prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if regions == "brats":
        conv = _convention(_values(pred) | _values(ref), where)
        masks = [(name, p, r) for name, p, r in zip(REGIONS, _brats_regions(pred, conv), _brats_regions(ref, conv))]
    elif regions == "labels":
        vals = labels if labels else sorted((_values(ref) | _values(pred)) - {0})
        names = {int(k): str(v) for k, v in (label_names or {}).items()}
        masks = [(names.get(int(v), str(v)), pred == v, ref == v) for v in vals]
    else:
        raise ValueError(f"regions must be 'brats' or 'labels', got {regions!r}")
    rows = []
    for name, p, r in masks:
        row: dict[str, Any] = {"region": name, **binary_scores(p, r, spacing, empty=empty, hd_method=hd_method)}
        if lesion_wise:
            lw = lesion_wise_scores(p, r, lesion_spacing if lesion_spacing is not None else spacing, challenge)
            row.update(lesion_dice=lw["dice"], lesion_hd95=lw["hd95"], num_tp=lw["num_tp"], num_fp=lw["num_fp"],
                       num_fn=lw["num_fn"], legacy_dice=lw["legacy_dice"], legacy_hd95=lw["legacy_hd95"],
                       legacy_sensitivity=lw["sensitivity"], legacy_specificity=lw["specificity"],
                       lesions=lw["lesions"])
        rows.append(row)
    return rows


def _evaluate_pair(args: tuple) -> list[dict[str, Any]]:
    cid, pp, rp, kw, spacing_aware = args
    pred, paff, pheader = load_image(pp)
    ref, raff, _ = load_image(rp)
    for arr, path in ((pred, pp), (ref, rp)):
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise ValueError(f"{path}: not a label map (non-integer values)")
    if pred.shape == ref.shape and not np.allclose(paff, raff, atol=1e-3):
        raise ValueError(f"{pp}: affine differs from the reference {rp} (max difference "
                         f"{np.abs(paff - raff).max():.3g}); the maps are not in the same space")
    spacing = spacing_from_affine(raff)[: ref.ndim] if spacing_aware else None
    # the BraTS 2023 script takes the voxel sizes from the prediction's header (get_zooms)
    lesion_spacing = (tuple(float(z) for z in pheader.get_zooms()[: pred.ndim]) if pheader is not None
                      else spacing_from_affine(paff)[: pred.ndim])
    rows = evaluate_case(np.rint(pred).astype(np.int16), np.rint(ref).astype(np.int16), spacing=spacing,
                         lesion_spacing=lesion_spacing, where=str(pp), **kw)
    return [{"case_id": cid, **r} for r in rows]


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, *, regions: str = "brats",
                     labels: Sequence[int] | None = None, spacing_aware: bool = False, hd_method: str = "monai",
                     empty: str = "brats", lesion_wise: bool = False, challenge: str = "GLI", workers: int = 1,
                     strict: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every matched case. Returns ``(rows, info)``: one row per case and region, and
    ``info`` with the unmatched case ids. ``strict``: a prediction without a reference is an error.

    ``regions="auto"`` (see :func:`reference_dataset`): ``labels`` (named after ``dataset.json``)
    for nnU-Net/MSD references and every non-BraTS folder, ``brats`` for BraTS data. ``info``
    records the prediction and reference folders and, when known, the dataset root, its subset
    and the label names (``attnseg report`` finds the images for its overlays there)."""
    ref_info = reference_dataset(ref_dir)
    if regions == "auto":
        regions = ref_info["regions"]
    pairs, no_ref, no_pred = find_pairs(pred_dir, ref_dir)
    if strict and no_ref:
        raise ValueError(f"{pred_dir}: predictions without a reference: {', '.join(no_ref[:10])}")
    if not pairs:
        raise ValueError(f"no case ids in common between {pred_dir} and {ref_dir}")
    kw = {"regions": regions, "labels": labels, "hd_method": hd_method, "empty": empty, "lesion_wise": lesion_wise,
          "challenge": challenge, "label_names": ref_info["label_names"] if regions == "labels" else None}
    jobs = [(cid, pp, rp, kw, spacing_aware) for cid, pp, rp in pairs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(ex.map(_evaluate_pair, jobs))
    else:
        results = [_evaluate_pair(j) for j in jobs]
    rows = [r for rs in results for r in rs]
    units = "mm" if spacing_aware else "voxels"
    return rows, {"cases": len(pairs), "predictions_without_reference": no_ref,
                  "references_without_prediction": no_pred, "distance_units": units, "hd_method": hd_method,
                  "empty_rule": empty, "regions": regions, "pred": str(Path(pred_dir).resolve()),
                  "ref": str(Path(ref_dir).resolve()), "data": ref_info["data"], "subset": ref_info["subset"],
                  "label_names": ref_info["label_names"] if regions == "labels" else None,
                  **({"lesion_wise": f"BraTS 2023 script, {challenge} parameters, HD95 deepmind in mm"}
                     if lesion_wise else {})}


def reference_dataset(ref_dir: str | os.PathLike) -> dict[str, Any]:
    """What the reference folder belongs to: ``{data, subset, label_names, regions}``.

    ``REF`` = an nnU-Net/MSD ``labelsTr``/``labelsTs`` folder (or the dataset root, ``Tr``): the
    dataset root, that subset, the names of ``dataset.json`` and ``regions="labels"``; a BraTS
    dataset: ``regions="brats"``; anything else: ``regions="labels"``, unless the label maps hold
    the value 4 (BraTS 2018–2021 labels).
    """
    ref = Path(ref_dir).resolve()
    out: dict[str, Any] = {"data": None, "subset": None, "label_names": None, "regions": "labels"}
    root, subset = (ref.parent, ref.name[-2:]) if ref.name in ("labelsTr", "labelsTs") else (ref, "Tr")
    if (root / "dataset.json").is_file():
        names = label_names_from_json(read_dataset_json(root).get("labels"))
        out.update(data=str(root), subset=subset, label_names=names or None)
        return out
    try:
        layout = detect_layout(ref)
    except ValueError:
        layout = None
    if layout == "brats":
        out.update(data=str(ref), regions="brats")
        return out
    files = _label_files(ref) if ref.is_dir() else {}
    if files:
        first = load_image(next(iter(files.values())))[0]
        if 4 in set(np.unique(np.rint(first)).astype(int).tolist()):
            out["regions"] = "brats"
    return out


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
    cols = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "lesions"]
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
            wr.writerow({k: (_fmt(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k != "lesions"})

    def w_lesions(fh):
        wr = csv.writer(fh)
        wr.writerow(["case_id", "region", "lesion", "volume_mm3", "dice", "hd95_mm", "matched", "counted"])
        for r in rows:
            for x in r.get("lesions", []):
                wr.writerow([r.get("case_id"), r["region"], x["lesion"], _fmt(x["volume"], 6), _fmt(x["dice"], 6),
                             _fmt(x["hd95"], 6), " ".join(str(m) for m in x["matched"]), int(x["counted"])])

    atomic(paths["per_case"], w_csv)
    if any("lesions" in r for r in rows):
        paths["lesions"] = out / "lesions.csv"
        atomic(paths["lesions"], w_lesions)
    atomic(paths["summary_json"], lambda fh: json.dump({"info": info, "summary": summary}, fh, indent=2,
                                                       allow_nan=True))
    units = info.get("distance_units", "voxels")
    metrics = [m for m in ("dice", "hd95", "assd", "sensitivity", "specificity", "jaccard", "lesion_dice",
                           "lesion_hd95") if any(m in s for s in summary.values())]
    head = ["region"] + [f"{m} ({units})" if m in ("hd95", "assd") else f"{m} (mm)" if m == "lesion_hd95" else m
                         for m in metrics]
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


# default bundled config of the official BraTS 2024+ package per sub-challenge
BRATS2024_CONFIGS = {"GLI": "gli", "SSA": "gli", "PED": "ped", "MET": "mets", "MEN": "MenPre"}


def evaluate_brats2024(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                       config: str | None = None, challenge: str = "GLI", strict: bool = False) -> dict[str, Any]:
    """Score the matched cases with the official BraTS 2024+ metrics package
    (``brats-evaluation``, built on panoptica), without re-implementing anything.

    For each case ``brats_evaluation.evaluate_single_exam`` with the evaluator of ``config``
    (a bundled name: gli, ped, mets, MenRT, MenPre, GoAT, or a YAML path; default from
    ``challenge``); references without a prediction go to the package's ``missings`` (it
    penalises them). Writes ``OUT/brats2024_results.json`` (the package's JSON layout) and
    ``OUT/brats2024_metrics.csv`` (the package's ``parse_seg_results``; ``parse_mets_results``
    with its CLI defaults 20 mm³ / 0.1 for the mets config). Returns ``dict(config, cases, json,
    csv, means)`` with ``means`` the CSV's mean row (numeric columns)."""
    # optional: the official BraTS 2024+ package and its panoptica (attnseg[brats])
    feature = "--protocol brats2024, the official BraTS package; its panoptica pins numpy<2.3 and pandas<3"
    brats_evaluation = require("brats_evaluation", "brats", feature)
    Panoptica_Evaluator = require("panoptica", "brats", feature).Panoptica_Evaluator
    name = config or BRATS2024_CONFIGS[challenge]
    cfg = Path(name) if Path(name).suffix in (".yaml", ".yml") else brats_evaluation.config_path(name)
    if not Path(cfg).is_file():
        raise FileNotFoundError(f"{cfg}: BraTS evaluation config not found")
    pairs, no_ref, no_pred = find_pairs(pred_dir, ref_dir)
    if strict and no_ref:
        raise ValueError(f"{pred_dir}: predictions without a reference: {', '.join(no_ref[:10])}")
    if not pairs:
        raise ValueError(f"no case ids in common between {pred_dir} and {ref_dir}")
    evaluator = Panoptica_Evaluator.load_from_config(str(cfg))
    metrics = []
    for cid, pp, rp in pairs:
        res = brats_evaluation.evaluate_single_exam(str(pp), str(rp), cid, evaluator)
        if "error" in res:
            raise ValueError(f"{pp}: the BraTS evaluation package failed on this case: {res['error']}")
        metrics.append(res)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, csv_path = out / "brats2024_results.json", out / "brats2024_metrics.csv"
    tmp = js.with_name(f".{js.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump({"metrics": metrics, "missings": list(no_pred)}, fh, indent=4)
    os.replace(tmp, js)
    tmp_csv = csv_path.with_name(f".{csv_path.name}.tmp")
    if name == "mets":
        brats_evaluation.parse_mets_results(str(js), 20.0, 0.1, str(tmp_csv))
    else:
        brats_evaluation.parse_seg_results(str(js), str(tmp_csv))
    os.replace(tmp_csv, csv_path)
    with open(csv_path, newline="") as fh:
        table = list(csv.DictReader(fh))
    mean_row = next((r for r in table if r.get("subject_id") == "mean"), {})
    means = {}
    for k, v in mean_row.items():
        try:
            means[k] = float(v)
        except (TypeError, ValueError):
            continue
    return {"config": str(name), "cases": len(pairs), "json": js, "csv": csv_path, "means": means}
