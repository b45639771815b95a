"""Preprocessing of one case: crop to the non-zero region, optional resampling to a target
spacing, per-channel z-score over the foreground; and the inverse mapping of predictions back
to the original grid.

Arrays stay in nibabel array order; the processed affine is kept in the metadata so that a
prediction can be written in either geometry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnseg.data.errors import DataError
from attnseg.data.labels import brats_to_classes, remap_labels


@dataclass
class PreprocessConfig:
    """How a case is turned into network input.

    Attributes:
        crop_nonzero: crop to the bounding box of voxels that are non-zero in any channel (or labelled).
        normalize: ``"zscore"`` (per channel, mean/std over that channel's non-zero voxels;
            background stays 0), ``"zscore_all"`` (over every voxel, as the references did), ``"ct"``
            (clip to ``extra["ct"][str(channel)]["lo"/"hi"]``, then subtract its ``mean`` and divide
            by its ``std``: dataset-wide statistics, as nnU-Net does for CT), ``"none"``, or a list
            with one of these per channel (``attnseg plan`` writes it).
        target_spacing: resample to these voxel sizes in mm (None = keep).
        label_mapping: ``"auto"`` (BraTS conventions → classes 0..3, other layouts kept as stored),
            ``"none"`` or an explicit ``{stored value: class}`` dict (values not listed → 0),
            e.g. to select a subset of MALC's structures.
    """

    crop_nonzero: bool = True
    normalize: str | list[str] = "zscore"
    target_spacing: tuple[float, ...] | None = None
    label_mapping: str | Mapping[int, int] = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.label_mapping, Mapping):
            d["label_mapping"] = {str(k): int(v) for k, v in sorted(self.label_mapping.items())}
        if self.target_spacing is not None:
            d["target_spacing"] = [float(s) for s in self.target_spacing]
        return d


def nonzero_bbox(image: np.ndarray, label: np.ndarray | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(lo, hi) voxel bounds (hi exclusive) of voxels non-zero in any channel of (C, *S) ``image`` or labelled."""
    mask = np.any(image != 0, axis=0)
    if label is not None:
        mask |= label != 0
    if not mask.any():
        return tuple(0 for _ in mask.shape), tuple(mask.shape)
    lo, hi = [], []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return tuple(lo), tuple(hi)


def zscore(image: np.ndarray, mode: str | list[str] = "zscore",
           ct: Mapping[str, Mapping[str, float]] | None = None) -> np.ndarray:
    """Per-channel z-score of (C, *S) float32 ``image`` (in place when possible; see :class:`PreprocessConfig`).

    ``mode`` is one mode for every channel or a list with one per channel; ``ct`` holds the
    dataset statistics of the ``"ct"`` channels (``{"0": {"lo", "hi", "mean", "std"}}``).
    """
    modes = list(mode) if isinstance(mode, (list, tuple)) else [mode] * image.shape[0]
    if len(modes) != image.shape[0]:
        raise ValueError(f"normalize lists {len(modes)} mode(s) for {image.shape[0]} channel(s)")
    for m in modes:
        if m not in ("zscore", "zscore_all", "ct", "none"):
            raise ValueError(f"normalize must be 'zscore', 'zscore_all', 'ct' or 'none', got {m!r}")
    if all(m == "none" for m in modes):
        return image
    out = image.astype(np.float32, copy=False)
    for c in range(out.shape[0]):  # per channel statistics (C ≤ ~4): not a hot loop
        ch = out[c]
        if modes[c] == "none":
            continue
        if modes[c] == "ct":
            st = (ct or {}).get(str(c))
            if st is None:
                raise ValueError(f"normalize 'ct' for channel {c} needs extra.ct.{c} (lo, hi, mean, std)")
            np.clip(ch, float(st["lo"]), float(st["hi"]), out=ch)
            ch -= float(st["mean"])
            ch /= max(float(st["std"]), 1e-8)
        elif modes[c] == "zscore":
            fg = ch != 0
            vals = ch[fg]
            if vals.size == 0:
                continue
            mean, std = float(vals.mean()), float(vals.std())
            ch[fg] = (vals - mean) / max(std, 1e-8)
        else:
            mean, std = float(ch.mean()), float(ch.std())
            ch -= mean
            ch /= max(std, 1e-8)
    return out


def resample_array(arr: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """Resample (C, *S) ``arr`` to spatial ``shape``: order 1 = (tri)linear, 0 = nearest (labels)."""
    t = torch.from_numpy(np.ascontiguousarray(arr))[None]
    if order == 0:
        out = F.interpolate(t.float(), size=shape, mode="nearest-exact")
        return out[0].numpy().astype(arr.dtype)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return F.interpolate(t.float(), size=shape, mode=mode, align_corners=False)[0].numpy()


def convert_labels(label: np.ndarray, convention: str, mapping: str | Mapping[int, int]) -> np.ndarray:
    """Stored label map → training classes (uint8) according to ``mapping`` (see :class:`PreprocessConfig`)."""
    if isinstance(mapping, Mapping):
        return remap_labels(label, {int(k): int(v) for k, v in mapping.items()}, default=0)
    if mapping == "none":
        return label.astype(np.int16 if label.max(initial=0) > 255 else np.uint8)
    if mapping != "auto":
        raise ValueError(f"label_mapping must be 'auto', 'none' or a dict, got {mapping!r}")
    if convention.startswith("brats"):
        return brats_to_classes(label, convention)
    if label.size and (label.min() < 0 or label.max() > 255):
        raise DataError(f"label values {int(label.min())}..{int(label.max())} do not fit classes 0..255; "
                        f"give label_mapping")
    return label.astype(np.uint8)


def preprocess_case(data: dict[str, Any], config: PreprocessConfig | None = None,
                    convention: str = "plain") -> dict[str, Any]:
    """Apply ``config`` to a :func:`~attnseg.data.readers.load_case` dict.

    Returns ``dict(image float32 (C, *S'), label uint8 classes (*S') or None, meta)`` where
    ``meta`` holds what :func:`restore_prediction` needs: original shape, crop box, spacings,
    original and processed affines.
    """
    cfg = config or PreprocessConfig()
    image = np.asarray(data["image"], dtype=np.float32)
    label = data.get("label")
    if label is not None:
        label = convert_labels(np.asarray(label), convention, cfg.label_mapping)
    orig_shape = tuple(int(s) for s in image.shape[1:])
    if cfg.crop_nonzero:
        lo, hi = nonzero_bbox(image, label)
    else:
        lo, hi = (0,) * len(orig_shape), orig_shape
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    image = np.ascontiguousarray(image[(slice(None), *sl)])
    if label is not None:
        label = np.ascontiguousarray(label[sl])
    spacing = tuple(float(s) for s in data["spacing"])
    affine = np.asarray(data["affine"], dtype=np.float64)
    crop_aff = affine.copy()
    crop_aff[:3, 3] = affine[:3, :3] @ np.asarray(lo, dtype=np.float64) + affine[:3, 3]
    new_spacing = spacing
    proc_aff = crop_aff
    if cfg.target_spacing is not None:
        tgt = tuple(float(s) for s in cfg.target_spacing)
        if len(tgt) != len(spacing):
            raise ValueError(f"target_spacing {tgt} must have {len(spacing)} values")
        if not np.allclose(tgt, spacing, rtol=1e-3):
            shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(image.shape[1:], spacing, tgt))
            ratio = np.array([n / m for n, m in zip(image.shape[1:], shape)])  # old voxels per new voxel
            # intensities before z-score so that the statistics are taken on the final grid
            image = resample_array(image, shape, 1)
            if label is not None:
                label = resample_array(label[None], shape, 0)[0]
            scale = np.eye(4)
            scale[:3, :3] = np.diag(ratio)
            scale[:3, 3] = 0.5 * ratio - 0.5  # align_corners=False: voxel centres
            proc_aff = crop_aff @ scale
            new_spacing = tuple(float(s * r) for s, r in zip(spacing, ratio))
    image = zscore(image, cfg.normalize, (cfg.extra or {}).get("ct"))
    meta = {
        "case_id": data.get("case_id"),
        "original_shape": list(orig_shape),
        "crop_lo": list(lo), "crop_hi": list(hi),
        "spacing": list(spacing), "processed_spacing": list(new_spacing),
        "processed_shape": list(image.shape[1:]),
        "affine": affine.tolist(), "processed_affine": proc_aff.tolist(),
        "label_convention": convention,
    }
    return {"image": image, "label": label, "meta": meta}


def restore_prediction(pred: np.ndarray | torch.Tensor, meta: Mapping[str, Any], fill: float = 0) -> np.ndarray:
    """Map a prediction on the processed grid back to the original image grid.

    ``pred`` is either a label map (*S') of integers (resampled nearest) or channel-first
    probabilities/logits (C, *S') of floats (resampled linearly); outside the crop box the
    result is ``fill`` (background). Output shape: (*original) or (C, *original).
    """
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    nd = len(meta["processed_shape"])
    is_label = p.ndim == nd
    if tuple(p.shape[-nd:]) != tuple(meta["processed_shape"]):
        raise ValueError(f"prediction shape {p.shape} does not match processed shape {meta['processed_shape']}")
    lo, hi = meta["crop_lo"], meta["crop_hi"]
    crop_shape = tuple(b - a for a, b in zip(lo, hi))
    q = p[None] if is_label else p
    if tuple(q.shape[1:]) != crop_shape:
        q = resample_array(q, crop_shape, 0 if is_label else 1)
    out = np.full((q.shape[0], *meta["original_shape"]), fill, dtype=q.dtype)
    out[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))] = q
    return out[0] if is_label else out


def preprocess_config(cfg: dict[str, Any] | None) -> PreprocessConfig:
    """``data.preprocess`` config section → :class:`attnseg.data.preprocess.PreprocessConfig`."""
    cfg = dict(cfg or {})
    if cfg.get("target_spacing") is not None:
        cfg["target_spacing"] = tuple(float(s) for s in cfg["target_spacing"])
    try:
        return PreprocessConfig(**cfg)
    except TypeError as exc:
        raise ValueError(f"data.preprocess: {exc}") from exc
