"""Dataset fingerprint and a training plan derived from it, the way nnU-Net v2 plans.

``fingerprint_dataset(root)`` reads every case once and records what planning needs: per-case
shape (after cropping to the non-zero region) and spacing, per-channel intensity statistics of
the foreground (labelled voxels), the imaging modality of each channel (CT or MR, from
``dataset.json`` or the value range), the label set with names, class frequencies and lesion
(connected component) sizes.

``plan_from_fingerprint(fp, memory_gb=...)`` turns it into an attnseg training config:

* **target spacing**: the median spacing; when one axis is much coarser than the others (spacing
  > 3× and voxel count < 1/3 of the other axes, nnU-Net's test) that axis takes the 10th
  percentile of its spacings instead (never finer than the other axes);
* **patch size**: start from a patch with the aspect ratio of the target spacing and the volume of
  256³ voxels, clip it to the median (resampled) shape, make it divisible by the network's
  pooling, and shrink the axis that is largest relative to the median shape until two patches fit
  the memory budget (:func:`estimate_training_bytes`);
* **batch size**: as many patches as the budget allows, at least 2, at most enough to cover 5 %
  of the dataset's voxels per step;
* **normalisation** per channel: CT → clip to the foreground's 0.5–99.5 percentiles, then
  z-score with the foreground mean/std of the whole dataset; MR and others → z-score per case
  (over the non-zero region when cropping removed ≥ 25 % of the volume, as nnU-Net does);
* **network**: a U-Net pools every axis at each level, so the number of levels follows the
  smallest patch axis (bottleneck edge ≥ 4 voxels), at most 6 levels; widths 32·2^l capped at 320;
* **task**: BraTS regions only for BraTS data (layout ``brats``); everything else is a class task
  with ``num_classes`` = largest label + 1, the label names from ``dataset.json``;
* **schedule**: SGD (Nesterov, momentum 0.99, lr 0.01) with polynomial decay, which is valid for
  any number of epochs.

Every choice is recorded with its reason (``plan["reasons"]``: rows of setting, value, why),
printed as a table by ``attnseg plan``. See docs/data.md for a comparison with
``nnUNetv2_plan_and_preprocess``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from attnseg.data.errors import DataError
from attnseg.data.preprocess import nonzero_bbox
from attnseg.data.readers import find_cases, load_case

__all__ = ["default_memory_gb", "estimate_training_bytes", "fingerprint_dataset", "plan_dataset",
           "plan_from_fingerprint", "unet_levels"]

ANISO = 3.0  # nnU-Net's anisotropy threshold
MIN_EDGE = 4  # smallest feature-map edge at the bottleneck
MAX_LEVELS = 6
BASE_FEATURES, MAX_FEATURES = 32, 320
_MR_NAMES = ("mr", "mri", "t1", "t2", "flair", "adc", "dwi", "pd", "t1ce", "t1c", "t1w", "t2w", "t1n", "t2f")


# ------------------------------------------------------------------------------------ fingerprint
def _modality(name: str, lo: float) -> tuple[str, str]:
    """(``"CT"`` | ``"MR"`` | ``"other"``, why) for one channel."""
    low = name.lower()
    if low == "ct" or low.startswith("ct") or " ct" in low or low.endswith("_ct"):
        return "CT", f"channel name {name!r}"
    if low in _MR_NAMES or any(low.startswith(m) for m in ("mr", "t1", "t2", "flair")):
        return "MR", f"channel name {name!r}"
    if lo < -500:
        return "CT", f"values reach {lo:.0f} (Hounsfield units)"
    return "MR", "not CT by name or value range (z-score per case)"


def fingerprint_dataset(root: str | os.PathLike, layout: str = "auto", *, samples_per_case: int = 10000,
                        seed: int = 0, channels: Sequence[str] | None = None) -> dict[str, Any]:
    """Read every training case of ``root`` and summarise it (see the module docstring).

    Returns a JSON-friendly dict: ``root, layout, n_cases, channels, modalities, cases`` (per case:
    ``case_id, shape, cropped_shape, spacing``), ``intensity`` (per channel: mean, std, median,
    p00_5, p99_5, min, max over foreground voxels, sampled ``samples_per_case`` per case),
    ``labels`` (value → name), ``class_fraction`` (value → share of foreground voxels),
    ``lesions`` (value → median components per case and median component volume in mm³),
    ``relative_size_after_crop`` (median cropped/original voxel ratio), ``label_convention``.
    """
    cases = find_cases(root, layout, channels=list(channels) if channels else None)
    rng = np.random.default_rng(seed)
    n_ch = len(cases[0].image_paths) if cases[0].layout != "msd" else len(cases[0].channels)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_ch)]
    rows, counts, comps, vols = [], {}, {}, {}
    rel_sizes, lo_vals = [], [math.inf] * n_ch
    for case in cases:
        d = load_case(case)
        img, lab = d["image"], d["label"]
        if img.shape[0] != n_ch:
            raise DataError(f"{case.image_paths[0]}: {img.shape[0]} channel(s), the first case has {n_ch}")
        lo, hi = nonzero_bbox(img, lab)
        cropped = [b - a for a, b in zip(lo, hi)]
        rel_sizes.append(float(np.prod(cropped)) / float(np.prod(img.shape[1:])))
        sp = [float(s) for s in d["spacing"][: img.ndim - 1]]
        rows.append({"case_id": case.case_id, "shape": list(img.shape[1:]), "cropped_shape": cropped,
                     "spacing": sp})
        fg = lab > 0 if lab is not None else np.any(img != 0, axis=0)
        idx = np.flatnonzero(fg)
        if idx.size:
            pick = rng.choice(idx, size=min(samples_per_case, idx.size), replace=False)
            for c in range(n_ch):
                samples[c].append(img[c].ravel()[pick])
        for c in range(n_ch):
            lo_vals[c] = min(lo_vals[c], float(img[c].min()))
        if lab is not None:
            vals, cnt = np.unique(lab, return_counts=True)
            voxel_mm3 = float(np.prod(sp))
            for v, n in zip(vals.tolist(), cnt.tolist()):
                if v == 0:
                    continue
                counts[v] = counts.get(v, 0) + int(n)
                cc, k = ndimage.label(lab == v)
                comps.setdefault(v, []).append(k)
                if k:
                    sizes = np.bincount(cc.ravel())[1:]
                    vols.setdefault(v, []).extend((sizes * voxel_mm3).tolist())
    names = cases[0].channels
    intensity, modalities, why_mod = [], [], []
    for c in range(n_ch):
        v = np.concatenate(samples[c]) if samples[c] else np.zeros(1, np.float32)
        intensity.append({"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                          "p00_5": float(np.percentile(v, 0.5)), "p99_5": float(np.percentile(v, 99.5)),
                          "min": float(v.min()), "max": float(v.max())})
        m, why = _modality(str(names[c]), lo_vals[c])
        modalities.append(m)
        why_mod.append(why)
    label_names = dict(cases[0].extra.get("label_names") or {})
    total = max(sum(counts.values()), 1)
    present = sorted(counts)
    declared = cases[0].extra.get("labels") or []
    values = sorted({*present, *(int(v) for v in declared if int(v) != 0), *label_names})
    return {
        "root": str(Path(root)), "layout": cases[0].layout, "n_cases": len(cases),
        "label_convention": cases[0].label_convention, "channels": [str(n) for n in names],
        "modalities": modalities, "modality_reasons": why_mod, "cases": rows,
        "relative_size_after_crop": float(np.median(rel_sizes)), "intensity": intensity,
        "labels": {int(v): str(label_names.get(v, v)) for v in values},
        "class_fraction": {int(v): counts.get(v, 0) / total for v in values},
        "lesions": {int(v): {"components_per_case": float(np.median(comps.get(v, [0]))),
                             "median_volume_mm3": float(np.median(vols[v])) if vols.get(v) else 0.0}
                    for v in values},
    }


# ---------------------------------------------------------------------------------------- planning
def default_memory_gb(device: str = "auto") -> tuple[float, str]:
    """Memory budget for one training process and where it comes from: the GPU's memory, else a
    quarter of the machine's RAM (at most 8 GB, nnU-Net's default target)."""
    if device in ("auto", "cuda"):
        try:
            if torch.cuda.is_available():
                gb = torch.cuda.get_device_properties(0).total_memory / 2**30
                return round(gb * 0.9, 1), f"90 % of {torch.cuda.get_device_name(0)} ({gb:.0f} GB)"
        except Exception:  # torch/CUDA probing is best effort: fall back to the CPU budget
            pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram = 16.0
    return round(min(8.0, ram / 4), 1), f"CPU: a quarter of {ram:.0f} GB RAM, at most 8 GB"


def unet_levels(patch: Sequence[int]) -> int:
    """Levels of a U-Net pooling every axis by 2: bottleneck edge ≥ :data:`MIN_EDGE`, ≤ :data:`MAX_LEVELS`."""
    pools = min(int(math.floor(math.log2(max(p, 1) / MIN_EDGE))) for p in patch)
    return int(min(max(pools, 0), MAX_LEVELS - 1) + 1)


def _features(levels: int) -> list[int]:
    return [min(BASE_FEATURES * 2**i, MAX_FEATURES) for i in range(levels)]


def estimate_training_bytes(patch: Sequence[int], in_channels: int, num_classes: int, batch: int,
                            features: Sequence[int], bytes_per_value: int = 4) -> float:
    """Rough peak memory (bytes) of training a U-Net (two conv-norm-act units per level) on ``batch``
    patches: activations kept for the backward pass (each unit keeps its conv, norm and activation
    outputs; the decoder adds the up-sampled map and the concatenation), 1.5× for the gradients
    alive during the backward pass, plus weights, gradients and two Adam/momentum buffers."""
    vox = float(np.prod(patch))
    act = vox * (in_channels + 3 * num_classes)
    params = 0.0
    prev = in_channels
    for lvl, f in enumerate(features):
        v = vox / (2 ** (lvl * len(patch)))
        last = lvl == len(features) - 1
        act += 6 * f * v + (0 if last else 9 * f * v)
        params += 27 * (prev * f + f * f) + (0 if last else 27 * 2 * f * f + 8 * f * features[lvl + 1])
        prev = f
    return 1.5 * act * batch * bytes_per_value + 4 * params * 4


def _divisible(patch: list[int], levels: int) -> list[int]:
    k = 2 ** (levels - 1)
    return [max(k, int(math.ceil(p / k)) * k) for p in patch]


def plan_from_fingerprint(fp: dict[str, Any], memory_gb: float | None = None, *, model: str = "unet",
                          device: str = "auto", precision: str | None = None) -> dict[str, Any]:
    """A training plan: ``{"config": attnseg config dict, "reasons": [(setting, value, why)], ...}``.

    ``memory_gb``: budget of one training process (default :func:`default_memory_gb`);
    ``precision``: the training precision the budget assumes (default: ``mixed`` on CUDA — 2 bytes
    per activation — else ``fp32``).
    """
    reasons: list[tuple[str, str, str]] = []
    mem_src = "--memory-gb"
    if memory_gb is None:
        memory_gb, mem_src = default_memory_gb(device)
    if precision is None:
        cuda = False
        if device in ("auto", "cuda"):
            try:
                cuda = torch.cuda.is_available()
            except Exception:  # no torch/CUDA: plan for the CPU
                cuda = False
        precision = "mixed" if cuda else "fp32"
    bpv = 2 if precision in ("mixed", "fp16", "bf16") else 4
    rows = fp["cases"]
    nd = len(rows[0]["spacing"])
    spacings = np.array([r["spacing"] for r in rows], dtype=np.float64)
    shapes = np.array([r["cropped_shape"] for r in rows], dtype=np.float64)
    n_ch = len(fp["channels"])
    label_values = sorted(int(v) for v in fp["labels"])
    brats = fp["layout"] == "brats" or str(fp.get("label_convention", "")).startswith("brats")

    # ---- target spacing
    target = np.percentile(spacings, 50, axis=0)
    med_shape = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(nd) if i != worst]
    why = "median spacing of the cases"
    if others:
        aniso_sp = target[worst] > ANISO * max(target[i] for i in others)
        aniso_vox = med_shape[worst] * ANISO < min(med_shape[i] for i in others)
        if aniso_sp and aniso_vox:
            t = float(np.percentile(spacings[:, worst], 10))
            t = max(t, max(target[i] for i in others) + 1e-5)
            target[worst] = t
            why = (f"median, but axis {worst} is anisotropic (spacing > {ANISO:g}× and voxels < 1/{ANISO:g} of the "
                   f"others): its 10th percentile, {t:.3g} mm")
        elif aniso_sp:
            why += f"; axis {worst} is > {ANISO:g}× coarser, kept (it has enough voxels)"
    target = [float(round(t, 5)) for t in target]
    resample = not np.allclose(spacings, np.array(target)[None], rtol=1e-3)
    reasons.append(("target spacing (mm)", " × ".join(f"{t:.3g}" for t in target),
                    why + ("" if resample else "; every case has it already: no resampling")))
    new_shapes = shapes * spacings / np.array(target)[None]
    med_new = np.maximum(np.round(np.median(new_shapes, axis=0)), 1).astype(int)
    reasons.append(("median shape (voxels)", " × ".join(str(s) for s in med_new),
                    "after cropping to the non-zero region and resampling to the target spacing"))

    # ---- task
    if brats:
        kind, num_classes = "brats-regions", 4
        reasons.append(("task", "brats-regions (ET, TC, WT)", "BraTS dataset (layout/label convention)"))
    else:
        kind = "classes"
        num_classes = max(label_values, default=1) + 1
        named = ", ".join(f"{v} {fp['labels'][v]}" for v in label_values)
        reasons.append(("task", f"classes, {num_classes} outputs", f"labels 0 (background), {named}"))

    # ---- patch, depth, batch under the memory budget
    budget = float(memory_gb) * 2**30
    tmp = 1.0 / np.array(target)
    ref_vol = 256.0**3 if nd == 3 else 2048.0**2
    patch = [int(round(v)) for v in tmp * (ref_vol / np.prod(tmp)) ** (1.0 / nd)]
    patch = [min(p, int(s)) for p, s in zip(patch, med_new)]
    levels = unet_levels(patch)
    patch = _divisible(patch, levels)

    def est(p: list[int], b: int) -> float:
        return estimate_training_bytes(p, n_ch, num_classes, b, _features(unet_levels(p)), bpv)

    shrunk = 0
    while est(patch, 2) > budget and max(patch) > MIN_EDGE:
        ax = int(np.argmax([p / s for p, s in zip(patch, med_new)]))
        step = 2 ** (unet_levels(patch) - 1)
        patch[ax] = max(patch[ax] - step, MIN_EDGE)
        levels = unet_levels(patch)
        patch = _divisible(patch, levels)
        shrunk += 1
    levels = unet_levels(patch)
    feats = _features(levels)
    why = f"aspect ratio of the target spacing, volume 256^{nd} voxels, clipped to the median shape"
    if shrunk:
        why += f"; shrunk {shrunk}× (largest axis relative to the median shape) to fit {memory_gb:g} GB"
    why += f"; divisible by {2 ** (levels - 1)}"
    reasons.append(("patch size (voxels)", " × ".join(str(p) for p in patch), why))
    per = est(patch, 1)
    fixed = est(patch, 0)
    fit = int((budget - fixed) // max(per - fixed, 1.0))
    n_vox = float(np.prod(med_new)) * len(rows)
    cap = int(round(0.05 * n_vox / float(np.prod(patch))))
    batch = max(min(fit, cap), 2)
    reasons.append(("batch size", str(batch),
                    f"{fit} patch(es) fit {memory_gb:g} GB ({mem_src}; {precision}, ~{per / 2**30:.2f} GB per patch); "
                    f"5 % of the dataset's voxels allow {cap}; at least 2"))
    reasons.append(("network", f"{levels} levels, features {feats}",
                    f"pooling every axis until the smallest patch axis is {MIN_EDGE}-{2 * MIN_EDGE - 1} voxels "
                    f"(at most {MAX_LEVELS} levels); widths {BASE_FEATURES}·2^l capped at {MAX_FEATURES}"))

    # ---- normalisation
    norm, ct = [], {}
    use_mask = fp["relative_size_after_crop"] < 0.75
    for c, (name, mod) in enumerate(zip(fp["channels"], fp["modalities"])):
        st = fp["intensity"][c]
        if mod == "CT":
            norm.append("ct")
            ct[str(c)] = {"lo": st["p00_5"], "hi": st["p99_5"], "mean": st["mean"], "std": st["std"]}
            reasons.append((f"normalisation {name}", "CT: clip + z-score",
                            f"{fp['modality_reasons'][c]}; clip to foreground 0.5–99.5 % [{st['p00_5']:.4g}, "
                            f"{st['p99_5']:.4g}], then (x − {st['mean']:.4g}) / {st['std']:.4g}"))
        else:
            norm.append("zscore" if use_mask else "zscore_all")
            where = ("non-zero voxels (cropping removed ≥ 25 % of the volume)" if use_mask
                     else "all voxels (cropping removed < 25 % of the volume)")
            reasons.append((f"normalisation {name}", "z-score per case", f"{fp['modality_reasons'][c]}; over {where}"))

    # ---- labels
    for v in label_values:
        les = fp["lesions"].get(v, {})
        reasons.append((f"label {v}", fp["labels"][v],
                        f"{100 * fp['class_fraction'].get(v, 0):.1f} % of labelled voxels; "
                        f"{les.get('components_per_case', 0):g} component(s) per case, median "
                        f"{les.get('median_volume_mm3', 0):.4g} mm³"))
    reasons.append(("schedule", "SGD lr 0.01, Nesterov 0.99, poly 0.9",
                    "nnU-Net's optimiser; polynomial decay is valid for any number of epochs"))

    preprocess: dict[str, Any] = {"crop_nonzero": True,
                                  "normalize": norm[0] if len(set(norm)) == 1 else norm,
                                  "target_spacing": target if resample else None}
    if ct:
        preprocess["extra"] = {"ct": ct}
    task: dict[str, Any] = {"kind": kind, "num_classes": num_classes, "in_channels": n_ch,
                            "channel_names": list(fp["channels"]) if fp["layout"] in ("nnunet", "msd") else None}
    if kind == "classes":
        task["label_names"] = {int(v): str(fp["labels"][v]) for v in label_values}
    kwargs: dict[str, Any] = {}
    if model in ("unet", "unet3d", "unet2d") or model.startswith("unet"):
        kwargs = {"spatial_dims": nd, "in_channels": n_ch, "out_channels": num_classes, "features": feats}
    config = {
        "name": f"{Path(fp['root']).name}-{model}",
        "model": {"name": model, "kwargs": kwargs},
        "task": task,
        "data": {"root": fp["root"], "layout": fp["layout"], "patch_size": patch, "batch_size": batch,
                 "preprocess": preprocess},
        "train": {"optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True,
                                "weight_decay": 3e-5},
                  "schedule": {"name": "poly", "power": 0.9}, "precision": precision},
        "plan": {"memory_gb": float(memory_gb), "estimated_gb_per_patch": round(per / 2**30, 3),
                 "median_shape": [int(s) for s in med_new], "n_cases": fp["n_cases"],
                 "reasons": [list(r) for r in reasons]},
    }
    return {"config": config, "reasons": reasons, "fingerprint": fp}


def plan_dataset(root: str | os.PathLike, layout: str = "auto", memory_gb: float | None = None,
                 model: str = "unet", device: str = "auto", precision: str | None = None) -> dict[str, Any]:
    """:func:`fingerprint_dataset` then :func:`plan_from_fingerprint`."""
    return plan_from_fingerprint(fingerprint_dataset(root, layout), memory_gb, model=model, device=device,
                                 precision=precision)
