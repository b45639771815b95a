"""Torch datasets over a :class:`~attnseg.data.cache.CaseCache`.

* :class:`PatchDataset` – random training patches with foreground oversampling and
  augmentation; 3-D patches, or 2-D axial slices when ``patch_size`` has two entries.
  Sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the data order and
  every random draw are reproducible whatever the number of DataLoader workers, and a
  resumed run that calls ``set_epoch(e)`` sees exactly the same patches.
* :class:`VolumeDataset` – whole preprocessed volumes for validation/inference, with the
  metadata needed to map predictions back (:func:`~attnseg.data.preprocess.restore_prediction`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from attnseg.data.augment import AugmentConfig, augment_intensity, extract_patch
from attnseg.data.cache import CachedCase, CaseCache
from attnseg.data.errors import DataError

# class -> region membership for BraTS classes (bg, NCR/NET, ED, ET) -> (ET, TC, WT)
_BRATS_REGIONS = torch.tensor([[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.float32)


def brats_regions_tensor(label: torch.Tensor) -> torch.Tensor:
    """(*S) int64 classes 0..3 → (3, *S) float32 regions (ET, TC, WT)."""
    return _BRATS_REGIONS[:, label.clamp(0, 3)]


class PatchDataset(Dataset):
    """Random training patches.

    Args:
        cache: the preprocessed cases.
        patch_size: 3 values (3-D patches) or 2 values (2-D patches from axial slices, i.e.
            the last array axis of 3-D volumes).
        samples_per_epoch: length of an epoch (default: number of cases); cases are visited in
            a seeded random order, cycling when there are more samples than cases.
        fg_fraction: fraction of patches centred on a labelled voxel; the others are centred
            anywhere (uniformly, clipped so the patch stays inside when the volume is larger).
        class_weights: relative probability of each foreground class for those patches
            (``{class: weight}``; default uniform over the classes present in the case).
        augment: :class:`AugmentConfig` (None = no augmentation).
        regions: also return ``regions`` (3, *patch) float32 = BraTS (ET, TC, WT) targets.
        seed: base seed; ``set_epoch`` selects the epoch.

    Each item: ``dict(image=float32 (C, *patch), label=int64 (*patch), case_id=str,
    centre=int64 (3,))`` (+ ``regions``).
    """

    def __init__(self, cache: CaseCache, patch_size: Sequence[int], samples_per_epoch: int | None = None,
                 fg_fraction: float = 0.33, class_weights: Mapping[int, float] | None = None,
                 augment: AugmentConfig | None = None, regions: bool = False, seed: int = 0,
                 case_indices: Sequence[int] | None = None):
        if len(patch_size) not in (2, 3) or any(int(s) < 1 for s in patch_size):
            raise ValueError(f"patch_size must be 2 or 3 positive ints, got {tuple(patch_size)}")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        self.cache = cache
        self.indices = list(range(len(cache))) if case_indices is None else [int(i) for i in case_indices]
        if not self.indices:
            raise DataError(f"{cache.cache_dir}: empty dataset (no cases selected)")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.samples_per_epoch = int(samples_per_epoch or len(self.indices))
        self.fg_fraction = float(fg_fraction)
        self.class_weights = dict(class_weights) if class_weights else None
        self.augment = augment or AugmentConfig.none()
        self.regions = regions
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (call before creating the DataLoader iterator of that epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def case_order(self) -> list[int]:
        """Case index of every sample of the current epoch (a seeded permutation, repeated as needed)."""
        key = (self.seed, self.epoch, self.samples_per_epoch)
        cached = getattr(self, "_order", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        rng = np.random.default_rng([self.seed, self.epoch, 0x5EED])
        n = len(self.indices)
        reps = -(-self.samples_per_epoch // n)
        order = np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.samples_per_epoch]
        result = [self.indices[i] for i in order]
        self._order = (key, result)
        return result

    def _centre(self, case: CachedCase, rng: np.random.Generator, spatial: tuple[int, ...]) -> np.ndarray:
        classes = case.fg_classes()
        if len(classes) and rng.random() < self.fg_fraction:
            if self.class_weights:
                w = np.array([self.class_weights.get(int(k), 0.0) for k in classes], dtype=np.float64)
                if w.sum() <= 0:
                    w = np.ones(len(classes))
            else:
                w = np.ones(len(classes))
            k = classes[rng.choice(len(classes), p=w / w.sum())]
            rows = case.fg[case.fg[:, 0] == k]
            return rows[rng.integers(len(rows)), 1:].astype(np.int64)
        # random centre; keep the patch inside the volume along axes where it fits
        ps = self._patch_extent(len(spatial))
        centre = []
        for n, p in zip(spatial, ps):
            if n >= p:
                centre.append(int(rng.integers(p // 2, n - p + p // 2 + 1)))
            else:
                centre.append(int(rng.integers(0, n)))
        return np.asarray(centre, dtype=np.int64)

    def _patch_extent(self, ndim: int) -> tuple[int, ...]:
        if len(self.patch_size) == ndim:
            return self.patch_size
        return (*self.patch_size, 1)  # 2-D patch on a 3-D volume: one axial slice

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        ci = self.case_order()[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
        case = self.cache[ci]
        spatial = tuple(case.image.shape[1:])
        centre = self._centre(case, rng, spatial)
        image, label = case.image, case.label
        if len(self.patch_size) == 2 and len(spatial) == 3:  # axial slice
            z = int(centre[2])
            image = image[..., z]
            label = label[..., z] if label is not None else None
            img, lab = extract_patch(image, label, centre[:2], self.patch_size, rng, self.augment)
        elif len(self.patch_size) != len(spatial):
            raise ValueError(f"patch_size {self.patch_size} does not fit volumes with {len(spatial)} spatial dims")
        else:
            img, lab = extract_patch(image, label, centre, self.patch_size, rng, self.augment)
        img = augment_intensity(img, rng, self.augment)
        out: dict[str, Any] = {"image": img, "case_id": case.case_id, "centre": torch.from_numpy(centre)}
        if lab is not None:
            out["label"] = lab
            if self.regions:
                out["regions"] = brats_regions_tensor(lab)
        return out


class VolumeDataset(Dataset):
    """Whole preprocessed volumes: ``dict(image=float32 (C, *S), label=int64 (*S) [if labelled],
    case_id, index)`` (+ ``regions``); ``meta(i)`` gives the preprocessing metadata of item ``i``."""

    def __init__(self, cache: CaseCache, case_indices: Sequence[int] | None = None, regions: bool = False):
        self.cache = cache
        self.indices = list(range(len(cache))) if case_indices is None else [int(i) for i in case_indices]
        self.regions = regions

    def __len__(self) -> int:
        return len(self.indices)

    def meta(self, i: int) -> dict[str, Any]:
        return self.cache[self.indices[i]].meta

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.cache[self.indices[i]]
        out: dict[str, Any] = {"image": torch.from_numpy(np.array(c.image, dtype=np.float32)),
                               "case_id": c.case_id, "index": i}
        if c.label is not None:
            lab = torch.from_numpy(np.array(c.label).astype(np.int64))
            out["label"] = lab
            if self.regions:
                out["regions"] = brats_regions_tensor(lab)
        return out


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (patch ops are memory-bound and
    several threads per worker oversubscribe the cores). Randomness needs no per-worker seed:
    every sample seeds its own generator from (seed, epoch, index)."""
    torch.set_num_threads(1)
