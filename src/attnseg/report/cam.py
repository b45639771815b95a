"""Class-activation / Grad-CAM pictures for one case and a trained checkpoint (``attnseg cam``).

The maps themselves come from :mod:`attnseg.attention.cam`; this module reads the case the way
training did (channel order, preprocessing and patch size stored in the checkpoint's ``task``),
crops a region around the foreground so that the backward pass fits in memory, picks a layer,
and writes the PNG overlays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.attention.cam import class_activation_maps, grad_cam, save_cam_overlays
from attnseg.data.io import load_image, spacing_from_affine
from attnseg.data.preprocess import preprocess_case, preprocess_config
from attnseg.data.readers import find_cases, load_case
from attnseg.models.checkpoint import build_model_from_checkpoint


@dataclass
class CamResult:
    """What :func:`cam_for_case` wrote and used."""

    paths: list[Path]
    layer: str
    method: str
    class_names: list[str]
    input_shape: tuple[int, ...]
    crop_lo: tuple[int, ...]
    notes: list[str] = field(default_factory=list)


def default_layer(model: nn.Module, x: torch.Tensor | None = None) -> str:
    """The last spatial convolution (kernel > 1) *run* in the forward pass: the finest decoder features
    just before the head. With ``x`` the order is observed with hooks (module definition order can
    differ from execution order, e.g. PANet's prior branch); without it the last one defined.
    """
    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    named = [(n, m) for n, m in model.named_modules()
             if n and isinstance(m, convs) and any(k > 1 for k in m.kernel_size)]
    if not named:
        raise ValueError("the model has no spatial convolution to explain; pass --layer")
    if x is None:
        return named[-1][0]
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: calls.append(n)) for n, m in named]
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(x)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return calls[-1] if calls else named[-1][0]


def candidate_layers(model: nn.Module) -> list[str]:
    """Names of the model's convolution modules (valid ``--layer`` values), in forward-definition order."""
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and n]


def class_names_of(task: dict[str, Any], num_outputs: int) -> list[str]:
    """Names of the model's output channels: (bg, ET, TC, WT) for BraTS region models, else class indices."""
    if task.get("kind") == "brats-regions" and num_outputs == 4:
        return ["background", "ET", "TC", "WT"]
    regions = task.get("regions")
    if regions and len(regions) + 1 == num_outputs:
        return ["background", *regions]
    return [f"class{k}" for k in range(num_outputs)]


def _read_case(path: Path, task: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``load_case``-style dict and channel names for a case folder or a single image file."""
    in_ch = int(task.get("in_channels") or 1)
    names = list(task.get("channel_names") or [])
    if path.is_dir():
        cases = find_cases(path.parent, require_labels=False, channels=names or None)
        match = [c for c in cases if c.case_id == path.name or Path(c.image_paths[0]).parent == path]
        if not match:
            raise FileNotFoundError(f"{path}: no case found in this folder")
        case = match[0]
        data = load_case(case)
        data["label"] = None
        return data, case.channels
    if not path.is_file():
        raise FileNotFoundError(f"{path}: case folder or image file not found")
    arr, affine, header = load_image(path, np.float32)
    if arr.ndim == 4:  # (X, Y, Z, C) multi-channel file
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = arr[None]
    if arr.shape[0] != in_ch:
        raise ValueError(f"{path}: {arr.shape[0]} channel(s), the model expects {in_ch} "
                         f"({', '.join(names) or 'see the checkpoint task'}); pass a case folder instead")
    data = {"image": arr, "label": None, "affine": affine, "header": header, "case_id": path.name,
            "spacing": spacing_from_affine(affine)}
    return data, names or [f"ch{i}" for i in range(arr.shape[0])]


def _roi(image: np.ndarray, size: Sequence[int], multiple: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Crop (or zero-pad) ``image`` (C, *S) to ``size`` around the centre of its non-zero voxels,
    then pad up to a multiple of ``multiple``. Returns the patch and the crop origin."""
    fg = np.any(image != 0, axis=0)
    centre = (np.argwhere(fg).mean(0) if fg.any() else np.array(fg.shape) / 2).round().astype(int)
    lo, patch_sl = [], []
    for c, n, s in zip(centre, fg.shape, size):
        s = min(int(s), n)
        a = int(np.clip(c - s // 2, 0, n - s))
        lo.append(a)
        patch_sl.append(slice(a, a + s))
    patch = image[(slice(None), *patch_sl)]
    pad = [(0, 0)] + [(0, (-n) % multiple) for n in patch.shape[1:]]
    return np.pad(patch, pad), tuple(lo)


def cam_for_case(checkpoint: str | os.PathLike, case: str | os.PathLike, out_dir: str | os.PathLike,
                 layer: str | None = None, classes: Sequence[int | str] | None = None, method: str = "gradcam",
                 roi_size: Sequence[int] | None = None, full: bool = False) -> CamResult:
    """Compute CAM/Grad-CAM maps of ``checkpoint`` on ``case`` and write one PNG per class to ``out_dir``.

    Args:
        checkpoint: attnseg checkpoint (its ``task`` tells channels, preprocessing and patch size).
        case: case folder (any layout :func:`attnseg.data.readers.find_cases` reads) or one image file.
        layer: module name for Grad-CAM (default :func:`default_layer`); ignored by ``method="cam"``.
        classes: output channels to explain, as indices or names (default: every non-background one).
        method: ``"gradcam"`` or ``"cam"`` (linear 1×1 head only).
        roi_size: spatial size of the region explained (default: the training patch size); the
            region is centred on the brain/foreground. ``full=True`` uses the whole preprocessed volume.

    Returns a :class:`CamResult`; raises ``ValueError``/``FileNotFoundError``/``KeyError`` with a
    clear message for a bad case, class or layer.
    """
    if method not in ("gradcam", "cam"):
        raise ValueError(f"method must be gradcam or cam, got {method!r}")
    model, ckpt = build_model_from_checkpoint(checkpoint)
    task = dict(ckpt.get("task") or {})
    data, channel_names = _read_case(Path(case), task)
    prep = preprocess_case(data, preprocess_config(task.get("preprocess")))
    image = prep["image"]
    multiple = int(getattr(model, "size_multiple", 1) or 1)
    if not full and multiple == 1:
        multiple = 16  # most backbones downsample 4×: keep every level's size even
    size = image.shape[1:] if full else (roi_size or task.get("patch_size") or image.shape[1:])
    if len(size) != image.ndim - 1:
        raise ValueError(f"ROI size {list(size)} does not match the {image.ndim - 1}-D image")
    patch, lo = _roi(image, size, multiple)
    x = torch.from_numpy(np.ascontiguousarray(patch))[None]
    k_out = getattr(model, "out_channels", None) or task.get("num_classes")
    if not isinstance(k_out, int):
        with torch.no_grad():
            out = model(x)
        k_out = int((out["out"] if isinstance(out, dict) else out).shape[1])
        del out
    names = class_names_of(task, int(k_out))
    if classes is None:
        targets = list(range(1, len(names))) if len(names) > 1 else [0]
    else:
        targets = []
        for c in classes:
            if isinstance(c, str) and not c.lstrip("-").isdigit():
                if c not in names:
                    raise KeyError(f"unknown class {c!r}; this model's outputs are {names}")
                targets.append(names.index(c))
            else:
                k = int(c)
                if not 0 <= k < len(names):
                    raise ValueError(f"class index {k} out of range 0..{len(names) - 1} ({names})")
                targets.append(k)
    if method == "cam":
        maps = class_activation_maps(model, x, target_classes=targets)
        used = "head input (CAM)"
    else:
        used = layer or default_layer(model, x)
        maps = grad_cam(model, x, used, target_classes=targets)
    # show the channel a radiologist would look at for the lesion (FLAIR for BraTS), else the first
    lower = [n.lower() for n in channel_names]
    ch = next((lower.index(n) for n in ("flair", "t2f", "t1ce", "t1c") if n in lower), 0)
    out_dir = Path(out_dir)
    paths = save_cam_overlays(patch[ch], maps[0], out_dir, [names[k] for k in targets],
                              prefix=f"{'gradcam' if method == 'gradcam' else 'cam'}")
    notes = []
    if not full and tuple(patch.shape[1:]) != tuple(image.shape[1:]):
        notes.append(f"maps computed on a {'x'.join(map(str, patch.shape[1:]))} region at voxel {list(lo)} of the "
                     f"preprocessed volume (use --full for the whole volume)")
    return CamResult(paths, used, method, [names[k] for k in targets], tuple(x.shape), lo, notes)
