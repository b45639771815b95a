"""Training configuration: defaults, YAML files with inheritance, ``--set`` overrides.

A config is a nested dict. :data:`DEFAULTS` lists every key the trainer reads (it is the
schema: unknown keys are rejected with the closest known name). A YAML file may name a
``base:`` file (relative to itself) whose values it overrides, so presets share one base.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from attnseg.data.slices import in_plane, parse_slice_axis

DEFAULTS: dict[str, Any] = {
    "name": "run",  # run folder name under output_dir
    "output_dir": "runs",  # parent folder of run folders
    "seed": 512,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "model": {
        "name": "panet-brats",
        "kwargs": {},
        "imports": [],  # extra Python modules to import first (they may register models)
    },
    "task": {
        # brats-regions: sigmoid outputs (bg, ET, TC, WT); classes: softmax over num_classes
        "kind": "brats-regions",
        "num_classes": 4,
        "in_channels": 4,
        "channel_names": None,  # e.g. [t1, t1ce, t2, flair]; None = the reader's default
        "label_names": None,  # {class: name} for logs, metrics.csv and reports; None = from the dataset
    },
    "data": {
        "root": None,
        "layout": "auto",
        "val_root": None,  # separate validation dataset; None = split data.root
        "val_fraction": 0.2,
        "split_seed": 512,
        "train_cases": None,  # explicit case ids (lists) override the split
        "val_cases": None,
        "use_all_for_training": False,  # --trainset: train on every case, validate on the split anyway
        "patch_size": [128, 128, 128],  # two values: a 2-D model trained on slices (see slice_axis)
        "slice_axis": None,  # 2-D/2.5-D on volumes: axial | coronal | sagittal | all; None = axial if 2-D
        "context": 0,  # 2.5-D: slices z-k..z+k of every modality as input channels (k = context)
        "batch_size": 1,  # per process
        "workers": 0,
        "foreground_fraction": 0.33,  # fraction of patches centred on a foreground voxel
        "augmentation": {},  # passed to the data pipeline (see docs/data.md)
        "preprocess": {},  # attnseg.data.preprocess.PreprocessConfig fields (crop_nonzero, normalize, ...)
        "cache_dir": None,
    },
    "train": {
        "epochs": 100,
        "iterations_per_epoch": None,  # None = ceil(training cases / global batch)
        "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-5, "momentum": 0.99,
                      "nesterov": True, "betas": [0.9, 0.999]},
        "schedule": {"name": "warmup_cosine", "warmup_epochs": 5, "flat_epochs": 35, "min_lr_ratio": 1e-3,
                     "step_epochs": 10, "gamma": 0.1, "power": 0.9, "patience": 100, "factor": 0.1},
        # auto (fp32 on CPU; CUDA: bf16 where native, else fp16 + GradScaler) | fp32 | bf16 | fp16 |
        # mixed (bf16 on CPU, fp16 + GradScaler on CUDA)
        "precision": "auto",
        "grad_clip": None,  # max global grad norm, None = off
        "fastpath": True,  # CPU fast paths (oneDNN conv3d, channels_last_3d, allocator thresholds)
        # torch.compile the network (inductor, one shape): true | false | auto (CUDA only: on CPU the
        # first iteration's compilation costs minutes for a ~1.1x step; docs/benchmarks.md)
        "compile": "auto",
        "deterministic": "auto",  # auto: true on CPU (free), false on CUDA (cudnn.benchmark); true | false
        "checkpoint_interval": 1,  # write last.pt every N epochs (and at every validation)
        "stop_after_epochs": None,  # stop early after this many epochs in this process (tests, jobs)
        "max_minutes": None,  # wall-clock budget of this process; the epoch that exceeds it is the last
        "max_nonfinite_steps": 5,  # consecutive NaN/Inf losses (skipped steps) that stop the run
    },
    "loss": {
        "name": "dice_ce",
        "kwargs": {"squared": True, "ce": "argmax"},
        "deep_supervision": {"enabled": False, "weights": {"out": 1.0, "level3": 1.0, "level2": 1.0,
                                                           "level1": 1.0},
                             "mode": "upsample_logits"},
        "prior": {"enabled": "auto", "weight": 1.0, "name": "dice", "kwargs": {"squared": True}},
    },
    "validation": {
        "interval": 2,  # epochs; 0 = never
        "metric": "dice_mean",
        "roi_size": None,  # None = data.patch_size
        "overlap": 0.5,
        "sw_batch_size": 1,
        "blend": "constant",
        "hd95": False,
        "max_cases": None,
        "precision": "auto",  # auto: bf16 on a CUDA GPU with native bf16, else fp32 | fp32 | bf16
        "mode": "full",  # full: whole volumes (sliding window) | patches: pseudo Dice on patches (cheap)
        "patches": 50,  # patches per validation in mode patches (split over the ranks)
    },
    "plan": {},  # what `attnseg plan` derived and why (information only; free-form)
    "log": {"interval": 10, "tensorboard": True, "curves": True, "progress": "auto"},
    # backend auto: cpu:gloo,cuda:nccl on CUDA, gloo on CPU; find_unused_parameters auto: probe one step
    "distributed": {"backend": "auto", "find_unused_parameters": "auto"},
}

# keys whose value is a free-form dict (not checked against DEFAULTS)
FREE_KEYS = {("model", "kwargs"), ("data", "augmentation"), ("data", "preprocess"), ("loss", "kwargs"),
             ("loss", "prior", "kwargs"), ("loss", "deep_supervision", "weights"), ("plan",),
             ("task", "label_names")}


def deep_merge(base: dict[str, Any], over: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``over`` (free-form dicts are replaced, not merged)."""
    out = copy.deepcopy(base)
    for key, val in over.items():
        sub = (*path, key)
        if isinstance(val, dict) and isinstance(out.get(key), dict) and sub not in FREE_KEYS:
            out[key] = deep_merge(out[key], val, sub)
        else:
            out[key] = copy.deepcopy(val)
    return out


def load_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving ``base:`` (a path relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    if path.resolve() in _seen:
        raise ValueError(f"{path}: circular 'base:' chain")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(yaml_error_line(path, exc)) from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping, found {type(data).__name__}")
    base = data.pop("base", None)
    if base:
        parent = load_yaml(path.parent / base, (*_seen, path.resolve()))
        data = deep_merge(parent, data)
    return data


def yaml_error_line(path: str | os.PathLike, exc: Exception) -> str:
    """One line for a YAML file the safe loader refused: where, and why (a ``!!python/...`` tag
    is named as code the file would run: attnseg never loads YAML with an unsafe loader)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if "python/" in problem:
        tag = problem.split("tag:yaml.org,2002:")[-1].rstrip("'\"")
        return (f"{where}: refused: the tag !!{tag} asks to run Python code; configs are read with a "
                f"safe YAML loader (plain values, lists and mappings only)")
    return f"{where}: not valid YAML: {problem}"


def parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (``3e-4`` → float, ``[1,2]`` → list, ``null``)."""
    try:
        val = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; accept the usual float spellings
    if isinstance(val, str):
        try:
            return float(val)
        except ValueError:
            return val
    return val


def set_by_path(cfg: dict[str, Any], dotted: str, value: Any, merge: bool = False) -> None:
    """``set_by_path(cfg, "train.optimizer.lr", 3e-4)``; creates intermediate dicts.

    ``merge``: a dict ``value`` is merged into an existing dict (recursively) instead of
    replacing it, so ``--set model.kwargs={features: [8, 16]}`` keeps the other kwargs.
    """
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    old = node.get(keys[-1])
    if merge and isinstance(value, dict) and isinstance(old, dict):
        value = _merge_all(old, value)
    node[keys[-1]] = value


def _merge_all(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge_all(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def get_by_path(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (as given to ``--set``); a mapping value is merged into
    the existing mapping (nested keys merge; give ``key.path=null`` first to clear one)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, got {item!r}")
        key, val = item.split("=", 1)
        set_by_path(cfg, key.strip(), parse_value(val), merge=True)
    return cfg


def _check_keys(cfg: dict[str, Any], ref: dict[str, Any], path: tuple[str, ...] = ()) -> None:
    for key, val in cfg.items():
        sub = (*path, key)
        if key not in ref:
            close = difflib.get_close_matches(key, list(ref), n=1)
            hint = f" (did you mean {'.'.join((*path, close[0]))!r}?)" if close else ""
            raise ValueError(f"unknown config key {'.'.join(sub)!r}{hint}")
        if isinstance(ref[key], dict) and sub not in FREE_KEYS:
            if not isinstance(val, dict):
                raise ValueError(f"config key {'.'.join(sub)!r} must be a mapping, got {val!r}")
            _check_keys(val, ref[key], sub)


def resolve_config(cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``cfg`` over :data:`DEFAULTS`, check the keys and normalise a few values."""
    cfg = cfg or {}
    _check_keys(cfg, DEFAULTS)
    out = deep_merge(DEFAULTS, cfg)
    # the default warm-up + flat phase (5 + 35 epochs) must not block short runs: when the config
    # does not set them and they exceed the epochs, they keep their shares of 100 epochs
    sch, given = out["train"]["schedule"], get_by_path(cfg, "train.schedule", {}) or {}
    epochs = int(out["train"]["epochs"])
    if sch.get("name") == "warmup_cosine" and not ({"warmup_epochs", "flat_epochs"} & set(given)) and \
            float(sch["warmup_epochs"]) + float(sch["flat_epochs"]) > epochs:
        share = epochs / 100.0
        sch["warmup_epochs"] = round(float(DEFAULTS["train"]["schedule"]["warmup_epochs"]) * share, 6)
        sch["flat_epochs"] = round(float(DEFAULTS["train"]["schedule"]["flat_epochs"]) * share, 6)
    d = out["data"]
    if isinstance(d["patch_size"], int):
        d["patch_size"] = [d["patch_size"]] * 3
    d["patch_size"] = [int(v) for v in d["patch_size"]]
    _resolve_slicing(d, out["validation"])
    if out["validation"]["roi_size"] is None:
        out["validation"]["roi_size"] = list(d["patch_size"])
    kind = out["task"]["kind"]
    if kind not in ("brats-regions", "classes"):
        raise ValueError(f"task.kind must be 'brats-regions' or 'classes', got {kind!r}")
    prec = out["train"]["precision"]
    if prec not in ("auto", "fp32", "bf16", "fp16", "mixed"):
        raise ValueError(f"train.precision must be auto, fp32, bf16, fp16 or mixed, got {prec!r}")
    if out["validation"]["precision"] not in ("auto", "fp32", "bf16"):
        raise ValueError(f"validation.precision must be auto, fp32 or bf16, got {out['validation']['precision']!r}")
    if out["train"].get("compile", "auto") not in ("auto", True, False):
        raise ValueError(f"train.compile must be auto, true or false, got {out['train']['compile']!r}")
    if out["validation"]["mode"] not in ("full", "patches"):
        raise ValueError(f"validation.mode must be full or patches, got {out['validation']['mode']!r}")
    if out["train"]["deterministic"] not in ("auto", True, False):
        raise ValueError(f"train.deterministic must be auto, true or false, got {out['train']['deterministic']!r}")
    if int(d["batch_size"]) < 1:
        raise ValueError("data.batch_size must be >= 1")
    return out


def _resolve_slicing(d: dict[str, Any], v: dict[str, Any]) -> None:
    """2-D models on volumes: ``patch_size`` with two values or a ``slice_axis`` selects slices
    (axial by default); a 3-value patch (or validation window) with a slice axis keeps its two
    in-plane values."""
    if len(d["patch_size"]) not in (2, 3):
        raise ValueError(f"data.patch_size must have 2 (2-D slices) or 3 values, got {d['patch_size']}")
    if d.get("slice_axis") is None and len(d["patch_size"]) == 3:
        if int(d.get("context") or 0):
            raise ValueError("data.context (2.5-D) needs a 2-D model: give data.patch_size two values "
                             "or set data.slice_axis")
        return
    axis = parse_slice_axis("axial" if d.get("slice_axis") is None else d["slice_axis"])
    if len(d["patch_size"]) == 3:
        ps = d["patch_size"]
        if axis == "all" and len(set(ps)) != 1:
            raise ValueError(f"data.slice_axis all needs a 2-value (in-plane) data.patch_size, got {ps}")
        d["patch_size"] = ps[:2] if axis == "all" else in_plane(ps, axis)
    roi = v.get("roi_size")
    if isinstance(roi, (list, tuple)) and len(roi) == 3:
        if axis == "all" and len(set(roi)) != 1:
            raise ValueError(f"data.slice_axis all needs a 2-value validation.roi_size, got {list(roi)}")
        v["roi_size"] = list(roi[:2]) if axis == "all" else in_plane(roi, axis)
    d["slice_axis"] = "all" if axis == "all" else ["sagittal", "coronal", "axial"][axis]
    d["context"] = int(d.get("context") or 0)
    if d["context"] < 0:
        raise ValueError(f"data.context must be >= 0, got {d['context']}")


def dump_yaml(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
