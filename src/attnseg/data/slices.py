"""2-D and 2.5-D training samples from 3-D volumes: slices along a chosen axis, with neighbours.

A volume is ``(C, X, Y, Z)`` in the array order of the file (nibabel order, not reoriented).
The slice axis is named as for volumes stored in RAS/LPS-like order, the usual case for BraTS
and nnU-Net data: ``sagittal`` = array axis 0, ``coronal`` = 1, ``axial`` = 2 (the default);
``all`` draws one of the three per sample (a model for the orthogonal ensemble).

2.5-D input (``context = k``): slice ``z`` is fed as ``C·(2k+1)`` channels, for each modality
the slices ``z−k … z+k`` in order (channel ``c·(2k+1) + j`` = modality ``c``, slice ``z−k+j``);
slices beyond the volume repeat the edge slice. The same layout is built at inference time by
:func:`stack_slices` (:mod:`attnseg.infer.slicewise`), so training and prediction agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attnseg.data.augment import augment_intensity, extract_patch
from attnseg.data.dataset import PatchDataset, brats_regions_tensor

__all__ = ["AXIS_NAMES", "SliceDataset", "axis_name", "context_indices", "parse_slice_axis", "stack_slices"]

AXIS_NAMES = {"sagittal": 0, "coronal": 1, "axial": 2}


def parse_slice_axis(value: Any) -> int | str:
    """``"axial"``/``"coronal"``/``"sagittal"``, ``0``/``1``/``2`` (array axis) or ``"all"`` → 0, 1, 2 or ``"all"``."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in AXIS_NAMES:
            return AXIS_NAMES[v]
        if v in ("all", "orthogonal"):
            return "all"
        if v.isdigit():
            value = int(v)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= int(value) <= 2:
        return int(value)
    raise ValueError(f"slice axis must be axial, coronal, sagittal, all or an array axis 0-2, got {value!r}")


def axis_name(axis: int | str) -> str:
    """0, 1, 2, ``"all"`` → ``sagittal``, ``coronal``, ``axial``, ``all``."""
    if axis == "all":
        return "all"
    return {v: k for k, v in AXIS_NAMES.items()}[int(axis)]


def in_plane(values: Sequence[int], axis: int) -> list[int]:
    """The two entries of a 3-value size that lie in the plane of slices along ``axis``."""
    return [int(v) for i, v in enumerate(values) if i != axis]


def context_indices(z: Sequence[int] | np.ndarray, n: int, context: int) -> np.ndarray:
    """``(len(z), 2k+1)`` slice indices ``z−k … z+k``, clipped to ``[0, n−1]`` (edge replication)."""
    z = np.asarray(z, dtype=np.int64).reshape(-1, 1)
    return np.clip(z + np.arange(-context, context + 1, dtype=np.int64)[None], 0, n - 1)


def stack_slices(volume: torch.Tensor | np.ndarray, axis: int, z: Sequence[int] | np.ndarray,
                 context: int = 0) -> torch.Tensor | np.ndarray:
    """2-D (2.5-D) inputs of slices ``z`` of a ``(C, X, Y, Z)`` volume along spatial ``axis``.

    Returns ``(len(z), C·(2k+1), P, Q)`` (same type and device as ``volume``), where ``(P, Q)``
    are the two other spatial axes in their order; see the module docstring for the channel layout.
    """
    c = volume.shape[0]
    n = volume.shape[1 + axis]
    idx = context_indices(z, n, context)  # (m, 2k+1)
    m, w = idx.shape
    if isinstance(volume, torch.Tensor):
        t = torch.from_numpy(idx.reshape(-1)).to(volume.device)
        sel = volume.index_select(1 + axis, t).movedim(1 + axis, 1)  # (C, m·w, P, Q)
    else:
        sel = np.moveaxis(np.take(volume, idx.reshape(-1), axis=1 + axis), 1 + axis, 1)
    sel = sel.reshape(c, m, w, *sel.shape[2:])
    if isinstance(sel, torch.Tensor):
        return sel.transpose(0, 1).reshape(m, c * w, *sel.shape[3:])
    return np.ascontiguousarray(sel.transpose(1, 0, 2, 3, 4)).reshape(m, c * w, *sel.shape[3:])


class SliceDataset(PatchDataset):
    """Random 2-D (or 2.5-D) training patches from slices of 3-D volumes.

    As :class:`~attnseg.data.dataset.PatchDataset` (same epoch order, foreground oversampling
    and determinism: sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``), but the
    patch centre picks a slice along ``axis`` (``"all"``: an axis drawn per sample) and the
    spatial augmentations act in the plane of that slice. With ``context = k`` the image has
    ``C·(2k+1)`` channels (:func:`stack_slices`); intensity augmentation draws its parameters per
    modality, so the neighbouring slices of one modality are transformed alike.

    Each item: ``dict(image=float32 (C·(2k+1), *patch), label=int64 (*patch), case_id,
    centre=int64 (3,), axis=int)``. 2-D cases (``(C, H, W)`` arrays) give plain 2-D patches.
    """

    def __init__(self, cache: Any, patch_size: Sequence[int], axis: int | str = 2, context: int = 0,
                 **kwargs: Any) -> None:
        if len(patch_size) != 2:
            raise ValueError(f"slice patches need 2 values (in-plane size), got {tuple(patch_size)}")
        super().__init__(cache, patch_size, **kwargs)
        self.axis = parse_slice_axis(axis)
        self.context = int(context)
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self._axis_now = 2

    def _patch_extent(self, ndim: int) -> tuple[int, ...]:
        if ndim == 2:
            return self.patch_size
        ext = list(self.patch_size)
        ext.insert(self._axis_now, 1)  # one slice thick along the slice axis
        return tuple(ext)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        ci = self.case_order()[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
        case = self.cache[ci]
        spatial = tuple(case.image.shape[1:])
        if len(spatial) == 2:
            if self.context:
                raise ValueError(f"{case.case_id}: 2.5-D context needs 3-D volumes, the case is 2-D")
            return super().__getitem__(index)
        axis = int(rng.integers(3)) if self.axis == "all" else int(self.axis)
        self._axis_now = axis
        centre = self._centre(case, rng, spatial)
        z = int(centre[axis])
        image = stack_slices(case.image, axis, [z], self.context)[0]
        label = np.take(case.label, z, axis=axis) if case.label is not None else None
        img, lab = extract_patch(image, label, np.delete(centre, axis), self.patch_size, rng, self.augment)
        c, w = case.image.shape[0], 2 * self.context + 1
        # per-modality intensity parameters: view the channels as (modality, neighbour slice)
        img = augment_intensity(img.reshape(c, w, *img.shape[1:]), rng, self.augment).reshape(c * w, *img.shape[1:])
        out: dict[str, Any] = {"image": img, "case_id": case.case_id, "centre": torch.from_numpy(centre),
                               "axis": axis}
        if lab is not None:
            out["label"] = lab
            if self.regions:
                out["regions"] = brats_regions_tensor(lab)
        return out
