"""Predict label maps for cases on disk with a trained model (the engine of ``attnseg predict``).

A :class:`Predictor` bundles the model, what the checkpoint says about the task (region or
class outputs, input channels and their order, preprocessing, label convention, patch size)
and the sliding-window inferer. :func:`predict_cases` runs it over a file or a dataset folder
and writes one NIfTI per case in the source geometry (affine and header of the input, the
input's shape), atomically, never into the input folder.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.data.io import is_image_file, save_image, strip_suffix
from attnseg.data.labels import classes_to_brats
from attnseg.data.preprocess import PreprocessConfig, preprocess_case, restore_prediction
from attnseg.data.readers import Case, find_cases, load_case
from attnseg.infer.fastpath import enable_cpu_fastpaths, onednn_bf16_supported, prepare_model
from attnseg.infer.postprocess import PostprocessConfig, postprocess
from attnseg.infer.slicewise import slice_inferer
from attnseg.infer.sliding_window import SlidingWindowInferer
from attnseg.models.checkpoint import build_model_from_checkpoint
from attnseg.models.convert import convert
from attnseg.runtime.checkpoint import load_checkpoint
from attnseg.runtime.fs import disk_full_error, is_disk_full, remove_stale_temp_files
from attnseg.runtime.lock import FolderLock
from attnseg.runtime.memory import is_out_of_memory, out_of_memory_message

__all__ = ["PredictResult", "Predictor", "check_output_dir", "list_input_cases", "load_predictor", "model_spatial_dims",
           "predict_cases"]

# PANet reference: channel order (t1, t2, t1ce, flair), z-score over the whole volume, no crop
_REFERENCE_TASKS: dict[str, dict[str, Any]] = {
    "panet-reference": {"kind": "brats-regions", "num_classes": 4, "in_channels": 4,
                        "channel_names": ["t1", "t2", "t1ce", "flair"], "label_convention": "brats",
                        "patch_size": [128, 128, 128],
                        "preprocess": {"crop_nonzero": False, "normalize": "zscore_all"},
                        "postprocess": {"min_component_voxels": 10, "et_threshold": 300}},
    "amis-reference": {"kind": "classes", "channel_names": None, "label_convention": "plain",
                       "patch_size": None, "preprocess": {"crop_nonzero": False, "normalize": "zscore_all"}},
}


@dataclass
class Predictor:
    """A model plus everything needed to turn a case into a label map.

    ``task``: the checkpoint's task dict (``kind``, ``num_classes``, ``in_channels``,
    ``channel_names``, ``label_convention``, ``patch_size``, ``preprocess``).
    """

    model: nn.Module
    task: dict[str, Any]
    inferer: SlidingWindowInferer  # or a slicewise.SliceInferer (2-D models on volumes): same call
    postprocess: PostprocessConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    spatial_dims: int = 3

    def logits(self, image: np.ndarray) -> torch.Tensor:
        """(C, *S) float32 preprocessed image → (K, *S) float32 logits on the CPU."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        expected = self.task.get("in_channels")
        if expected and x.shape[1] != int(expected):
            raise ValueError(f"the model expects {expected} input channels, the case has {x.shape[1]}")
        return self.inferer(x, self.model)[0].float().cpu()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per channel (region models) or softmax over channels (class models)."""
        return torch.sigmoid(logits) if self.task.get("kind") == "brats-regions" else torch.softmax(logits, 0)


def model_spatial_dims(model: nn.Module) -> int:
    """2 or 3: the model's ``spatial_dims`` (the model contract), else the first convolution's."""
    if getattr(model, "spatial_dims", 0):
        return int(model.spatial_dims)
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            return 3
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return 2
    return 3


def load_predictor(checkpoint: str | os.PathLike, *, arch: str | None = None, source: str | None = None,
                   device: str = "cpu", roi_size: Sequence[int] | int | None = None, overlap: float = 0.5,
                   sw_batch_size: int = 1, tta: bool = False, precision: str = "fp32", blend: str = "gaussian",
                   postprocess_config: PostprocessConfig | None = None, fastpath: bool = True,
                   malloc_tuning: bool = False, slice_axis: int | str | None = None,
                   slice_batch: int = 16, compile: bool = False) -> Predictor:
    """Load an attnseg checkpoint, or a reference checkpoint through the converter registry.

    ``source``: converter name (``panet-reference``, ``amis-reference``); by default attnseg
    checkpoints are recognised by their ``format`` key, a dict with ``net`` is taken for a PANet
    reference checkpoint and a bare state dict for an AMIS one (``arch`` names the preset).
    ``malloc_tuning``: keep large freed blocks in the heap (less kernel time, more peak memory); a
    process-wide setting, so off unless the caller opts in (`attnseg predict` does).
    ``compile``: the network through ``torch.compile`` (inductor with freezing), compiled once
    per window shape (3-D models; see :class:`SlidingWindowInferer`).
    A 2-D model segments 3-D volumes slice by slice (:mod:`attnseg.infer.slicewise`) along the
    checkpoint's slice axis with its 2.5-D context (axial, none for checkpoints without them);
    ``slice_axis`` overrides the axis (``"all"``: average of the three orthogonal directions),
    ``slice_batch`` slices go through the network at once; ``roi_size`` is then in-plane.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    ckpt = load_checkpoint(checkpoint)
    if "model_name" in ckpt and source is None:
        model, ckpt = build_model_from_checkpoint(ckpt, origin=checkpoint)
        task = dict(ckpt.get("task") or {})
        if not task:
            cfg_task = (ckpt.get("config") or {}).get("task") or {}
            task = {"kind": cfg_task.get("kind", "classes"), "in_channels": cfg_task.get("in_channels"),
                    "num_classes": cfg_task.get("num_classes"), "channel_names": cfg_task.get("channel_names")}
    else:
        if source is None:
            source = "panet-reference" if "net" in ckpt else "amis-reference"
        if source not in _REFERENCE_TASKS:
            raise ValueError(f"unknown checkpoint source {source!r}; choose from {sorted(_REFERENCE_TASKS)}")
        if source == "amis-reference" and not arch:
            raise ValueError(f"{checkpoint}: a bare state dict needs --arch (an AMIS preset such as unet3d)")
        conv = convert(source, ckpt, arch)
        model = conv.build()
        task = {k: (list(v) if isinstance(v, list) else (dict(v) if isinstance(v, dict) else v))
                for k, v in _REFERENCE_TASKS[source].items()}
        task.setdefault("in_channels", conv.model_kwargs.get("in_channels"))
        task.setdefault("num_classes", conv.model_kwargs.get("num_classes", conv.model_kwargs.get("out_channels")))
        task["source"] = source
    model = model.to(dev).eval()
    nd = model_spatial_dims(model)
    use_fast = fastpath and dev.type == "cpu"
    if use_fast:
        enable_cpu_fastpaths(malloc=malloc_tuning)
        if not compile:  # torch.compile picks its own kernels and layouts from the plain modules
            # channels-first: with oneDNN called directly, channels-last gave no speed-up here but
            # ~95 MB more peak memory at 128^3 (layout copies around the norms); see docs/inference.md
            prepare_model(model, nd, channels_last=False)
    if precision == "bf16" and dev.type == "cpu":
        if not onednn_bf16_supported():
            # without AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT, bf16 convolutions are emulated and
            # ~100x slower than fp32 (measured: docs/inference.md); fp32 is the sensible choice
            print("attnseg: warning: this CPU has no native bf16 convolution support; using fp32",
                  file=sys.stderr)
            precision = "fp32"
    roi = roi_size if roi_size is not None else (task.get("patch_size") or 128)
    if isinstance(roi, (list, tuple)) and len(roi) == 1:
        roi = int(roi[0])
    kind = task.get("kind", "classes")
    pp = postprocess_config or PostprocessConfig(kind=kind, **{k: v for k, v in (task.get("postprocess") or {}).items()
                                                               if k in PostprocessConfig.__dataclass_fields__})
    pp.kind = kind
    if nd == 2:  # a 2-D model on volumes: every slice (2.5-D: with its neighbours as channels)

        axis = slice_axis if slice_axis is not None else (task.get("slice_axis") or "axial")
        inferer: Any = slice_inferer(roi, axis, int(task.get("context") or 0), slice_batch=slice_batch,
                                     activation="sigmoid" if kind == "brats-regions" else "softmax",
                                     overlap=overlap, blend=blend, mirror_axes=(0, 1) if tta else None,
                                     precision=precision, device="cpu")
    elif slice_axis is not None:
        raise ValueError(f"{checkpoint}: --slice-axis applies to 2-D models; this checkpoint holds a 3-D model")
    else:
        inferer = SlidingWindowInferer(roi, overlap=overlap, sw_batch_size=sw_batch_size, blend=blend,
                                       mirror_axes=tuple(range(nd)) if tta else None, precision=precision,
                                       device="auto",  # stitched on the GPU when it fits, else on the CPU
                                       compile=compile)
    return Predictor(model=model, task=task, inferer=inferer, postprocess=pp, device=dev, spatial_dims=nd)


def check_output_dir(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is, or lies inside, an input folder (or a file's folder)."""
    out = output.resolve()
    for src in inputs:
        root = src.resolve()
        root = root if root.is_dir() else root.parent
        if out == root or root in out.parents:
            raise ValueError(f"refusing to write predictions into the input folder {root} (output {out}); "
                             f"choose an output folder outside it")


def list_input_cases(path: str | os.PathLike, layout: str = "auto",
                     channels: Sequence[str] | None = None, subset: str = "test") -> list[Any]:
    """Cases under ``path``: one image file (3-D, or 4-D with channels last), a CSV/JSON manifest,
    or a dataset folder in any layout :func:`attnseg.data.readers.find_cases` reads (labels not
    required): nnU-Net/MSD datasets give their ``subset`` (``test`` = ``imagesTs``, ``train``,
    ``all``), an ``imagesTs`` folder or a plain folder of images its files. A case with a missing
    channel file is returned with ``extra["error"]`` (prediction reports it and goes on)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() in (".csv", ".json"):
            return find_cases(p, "folder", require_labels=False)
        if not is_image_file(p):
            raise ValueError(f"{p}: not an image file (NIfTI, NRRD, MHA, ...) or a .csv/.json manifest")
        return [Case(case_id=strip_suffix(p.name), image_paths=[p], label_path=None, layout="file")]
    if not p.exists():
        raise FileNotFoundError(f"{p}: input not found")
    return find_cases(p, layout, channels=list(channels) if channels else None, require_labels=False,
                      subset=subset, incomplete="keep")


def _label_convention(case: Any, task: dict[str, Any], override: str | None) -> str:
    if override:
        return override
    conv = getattr(case, "label_convention", "plain")
    if conv.startswith("brats"):
        return conv
    return "brats2020" if str(task.get("label_convention", "")).startswith("brats") or \
        task.get("kind") == "brats-regions" else "plain"


def _load_image(case: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(case) and case.label_path is not None:
        case = dataclasses.replace(case, label_path=None)  # prediction needs no label: never check it
    data = load_case(case)
    img = data["image"]
    # a single 4-D file holds channels on its last axis: (1, x, y, z, C) -> (C, x, y, z)
    if img.ndim == 5 and img.shape[0] == 1:
        data["image"] = np.ascontiguousarray(np.moveaxis(img[0], -1, 0))
    data["label"] = None  # never used for prediction
    return data


@dataclass
class PredictResult:
    case_id: str
    status: str  # "ok", "skipped", "failed"
    path: Path | None = None
    seconds: float = 0.0
    error: str | None = None


def predict_cases(predictor: Predictor, input_path: str | os.PathLike, output_dir: str | os.PathLike, *,
                  layout: str = "auto", channels: Sequence[str] | None = None, save_probs: bool = False,
                  resume: bool = False, label_convention: str | None = None,
                  log: Callable[[str], None] | None = None, subset: str = "test") -> list[PredictResult]:
    """Predict every case of ``input_path`` into ``output_dir``/<case_id>.nii.gz.

    Labels are written in the input's release convention (BraTS 0/1/2/4 or 0/1/2/3 as detected
    from the input, else the checkpoint's) or as class indices for plain tasks; with
    ``save_probs`` also ``<case_id>_probs.nii.gz`` (float32, channels on the 4th axis). A case
    that fails (a missing channel file included) is reported and skipped; ``resume`` skips cases
    whose output exists; an output folder this call created is removed again when no case could
    be written. ``subset``: see :func:`list_input_cases`.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    inp, out_dir = Path(input_path), Path(output_dir)
    check_output_dir(out_dir, [inp])
    names = channels or predictor.task.get("channel_names") or None
    cases = list_input_cases(inp, layout, names if (inp.is_dir() and names) else None, subset)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # one prediction process per output folder; a lock left by a killed run is taken over
    with FolderLock(out_dir, "prediction") as lock:
        if lock.taken_over is not None:
            log(f"attnseg: {lock.describe_takeover()}")
        results = _predict_locked(predictor, cases, out_dir, save_probs=save_probs, resume=resume,
                                  label_convention=label_convention, log=log)
    if created and not any(r.status == "ok" for r in results) and not any(out_dir.iterdir()):
        out_dir.rmdir()  # every case failed: no empty folder left behind
    return results


# temporary files of save_image (temp file + rename) that a killed process may leave behind
_TEMP_PATTERNS = (".tmp_*.nii.gz", ".tmp_*.nii")


def _predict_locked(predictor: Predictor, cases: Sequence[Any], out_dir: Path, *, save_probs: bool, resume: bool,
                    label_convention: str | None, log: Callable[[str], None]) -> list[PredictResult]:
    stale = remove_stale_temp_files(out_dir, _TEMP_PATTERNS)
    if stale:
        log(f"attnseg: removed {len(stale)} partial file(s) of an interrupted run: {', '.join(p.name for p in stale)}")
    pcfg_dict = dict(predictor.task.get("preprocess") or {})
    pcfg = PreprocessConfig(**{k: v for k, v in pcfg_dict.items()
                               if k in PreprocessConfig.__dataclass_fields__ and k != "label_mapping"})
    results = []
    for i, case in enumerate(cases, 1):
        target = out_dir / f"{case.case_id}.nii.gz"
        tag = f"[{i}/{len(cases)}] {case.case_id}"
        if resume and target.exists() and (not save_probs or (out_dir / f"{case.case_id}_probs.nii.gz").exists()):
            log(f"{tag}: exists, skipped (--resume)")
            results.append(PredictResult(case.case_id, "skipped", target))
            continue
        t0 = time.perf_counter()
        writing: tuple[Path, int] | None = None
        try:
            data = _load_image(case)
            conv = _label_convention(case, predictor.task, label_convention)
            prep = preprocess_case(data, pcfg, "plain")
            logits = predictor.logits(prep["image"])
            pp_out = postprocess(logits.numpy(), predictor.postprocess)
            classes = restore_prediction(pp_out, prep["meta"], fill=0)
            labels = classes_to_brats(classes, conv) if conv.startswith("brats") else classes
            writing = (target, labels.size * 2 + 352)  # at most int16 voxels + the NIfTI header
            save_image(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int16), data["affine"], target,
                       header=data["header"])
            if save_probs:
                probs = restore_prediction(predictor.probabilities(logits).numpy(), prep["meta"], fill=0)
                inside = np.zeros(probs.shape[1:], dtype=bool)
                inside[tuple(slice(a, b) for a, b in zip(prep["meta"]["crop_lo"], prep["meta"]["crop_hi"]))] = True
                probs[0][~inside] = 1.0  # outside the cropped region: background for sure
                writing = (out_dir / f"{case.case_id}_probs.nii.gz", probs.size * 4 + 352)
                save_image(np.moveaxis(probs.astype(np.float32), 0, -1), data["affine"],
                           out_dir / f"{case.case_id}_probs.nii.gz", header=data["header"])
            dt = time.perf_counter() - t0
            log(f"{tag}: wrote {target} ({dt:.1f} s)")
            results.append(PredictResult(case.case_id, "ok", target, dt))
        except Exception as exc:  # one bad case must not stop the others
            dt = time.perf_counter() - t0
            if is_disk_full(exc) and writing is not None:
                # every following case would fail the same way: stop; --resume continues later
                raise disk_full_error(writing[0], writing[1], "prediction", exc) from exc
            msg = str(exc)
            if is_out_of_memory(exc):
                del exc  # its traceback holds the failed case's tensors
                inf = predictor.inferer
                msg = out_of_memory_message(
                    RuntimeError(msg), "sliding-window inference", roi=_roi(predictor),
                    sw_batch=int(getattr(inf, "sw_batch_size", 1)), tta=bool(getattr(inf, "mirror_axes", ())),
                    device=predictor.device)
                _release_memory(predictor.device)
            log(f"{tag}: FAILED: {msg}")
            results.append(PredictResult(case.case_id, "failed", None, dt, msg))
    return results


def _roi(predictor: Predictor) -> list[int] | None:
    """The window size of the predictor's inferer (None when it has none, e.g. whole slices)."""
    roi = getattr(predictor.inferer, "roi_size", None)
    if roi is None:
        return None
    return [int(roi)] * predictor.spatial_dims if isinstance(roi, int) else [int(r) for r in roi]


def _release_memory(device: torch.device) -> None:
    """Give back what a failed case held before the next one starts."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
