"""Training data: cases, split, deterministic patch sampling and the distributed epoch plan.

Every training sample is identified by a key ``(case_index, seed)``; the patch location and
the augmentation draws are a pure function of that key. The keys of one epoch are a pure
function of ``(seed, epoch)`` (:class:`EpochPlan`), so an interrupted run that resumes at
epoch ``e`` sees exactly the samples an uninterrupted run sees, whatever the number of data
workers, and a DDP run with ``N`` ranks × batch ``b`` sees the same samples per iteration as one
process with batch ``N·b`` (rank ``r`` takes items ``r·b … r·b+b−1`` of each global batch).

Volumes are held in memory as ``image (C, *sp) float32`` (z-scored per channel over non-zero
voxels) and ``label (*sp) uint8`` classes (BraTS: 0 bg, 1 NCR/NET, 2 ED, 3 ET).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


@dataclass
class Volume:
    """One case ready for sampling: ``image (C, *sp) float32``, ``label (*sp) uint8`` classes."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None = None


def preprocess_config(cfg: dict[str, Any] | None):
    """``data.preprocess`` config section → :class:`attnseg.data.preprocess.PreprocessConfig`."""
    from attnseg.data.preprocess import PreprocessConfig

    cfg = dict(cfg or {})
    if cfg.get("target_spacing") is not None:
        cfg["target_spacing"] = tuple(float(s) for s in cfg["target_spacing"])
    try:
        return PreprocessConfig(**cfg)
    except TypeError as exc:
        raise ValueError(f"data.preprocess: {exc}") from exc


def load_volumes(root: str, layout: str, task: dict[str, Any], case_ids: Sequence[str] | None = None,
                 preprocess: dict[str, Any] | None = None) -> list[Volume]:
    """Read the cases under ``root`` with :mod:`attnseg.data.readers` and preprocess them with
    :func:`attnseg.data.preprocess.preprocess_case` (crop to non-zero, per-channel z-score over
    non-zero voxels, optional resampling; BraTS labels → classes 0..3 whatever the release)."""
    from attnseg.data.preprocess import preprocess_case
    from attnseg.data.readers import find_cases, load_case

    pcfg = preprocess_config(preprocess)
    kw = {"channels": list(task["channel_names"])} if task.get("channel_names") else {}
    cases = find_cases(root, layout=layout, **kw)
    if case_ids is not None:
        wanted = set(case_ids)
        missing = wanted - {c.case_id for c in cases}
        if missing:
            raise ValueError(f"{root}: case ids not found: {sorted(missing)[:5]}")
        cases = [c for c in cases if c.case_id in wanted]
    vols = []
    for case in cases:
        d = preprocess_case(load_case(case), pcfg, case.label_convention)
        spacing = tuple(float(s) for s in d["meta"]["processed_spacing"])
        vols.append(Volume(case.case_id, d["image"], d["label"], spacing))
    return vols


def list_case_ids(root: str, layout: str, task: dict[str, Any]) -> list[str]:
    from attnseg.data.readers import find_cases

    kw = {"channels": list(task["channel_names"])} if task.get("channel_names") else {}
    return [c.case_id for c in find_cases(root, layout=layout, **kw)]


def split_cases(case_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic, file-system independent split: ids are sorted, then permuted with ``seed``."""
    ids = sorted(case_ids)
    if not ids:
        raise ValueError("the dataset has no cases")
    n_val = int(round(len(ids) * float(val_fraction)))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), len(ids) - 1) if len(ids) > 1 else 0
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    train = sorted(ids[i] for i in perm[n_val:])
    return train, val


def _crop_start(size: int, patch: int, centre: int | None, rng: np.random.Generator) -> int:
    if size <= patch:
        return 0
    if centre is None:
        return int(rng.integers(0, size - patch + 1))
    return int(min(max(centre - patch // 2, 0), size - patch))


def sample_patch(vol: Volume, patch_size: Sequence[int], rng: np.random.Generator, foreground_fraction: float,
                 flip: bool = True, intensity: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random patch ``(C, *patch)``, ``(*patch)`` from ``vol`` (zero-padded where the volume is
    smaller); with probability ``foreground_fraction`` it is centred on a random foreground voxel.
    Augmentation: random flips of every axis (p 0.5 each) and, if ``intensity > 0``, a random
    per-channel scale ``1 + U(−i, i)`` and shift ``U(−i, i)``."""
    img, lab = vol.image, vol.label
    sp = img.shape[1:]
    nd = len(sp)
    patch = [int(p) for p in patch_size][-nd:]
    centre = None
    if lab is not None and rng.random() < foreground_fraction:
        fg = np.flatnonzero(lab)
        if fg.size:
            centre = np.unravel_index(int(fg[rng.integers(fg.size)]), sp)
    starts = [_crop_start(s, p, None if centre is None else int(centre[i]), rng) for i, (s, p) in
              enumerate(zip(sp, patch))]
    sl = tuple(slice(st, st + p) for st, p in zip(starts, patch))
    out_img = np.zeros((img.shape[0], *patch), np.float32)
    out_lab = np.zeros(patch, np.uint8)
    src = img[(slice(None), *sl)]
    dst = tuple(slice(0, s) for s in src.shape[1:])
    out_img[(slice(None), *dst)] = src
    if lab is not None:
        out_lab[dst] = lab[sl]
    if flip:
        axes = [a for a in range(nd) if rng.random() < 0.5]
        if axes:
            out_img = np.flip(out_img, [a + 1 for a in axes])
            out_lab = np.flip(out_lab, axes)
    if intensity > 0:
        c = img.shape[0]
        scale = 1.0 + rng.uniform(-intensity, intensity, c).astype(np.float32)
        shift = rng.uniform(-intensity, intensity, c).astype(np.float32)
        out_img = out_img * scale.reshape(-1, *[1] * nd) + shift.reshape(-1, *[1] * nd)
    return np.ascontiguousarray(out_img), np.ascontiguousarray(out_lab)


class PatchDataset(Dataset):
    """Map-style dataset indexed by sample keys ``(case_index, seed)`` (see module doc)."""

    def __init__(self, volumes: Sequence[Volume], patch_size: Sequence[int], foreground_fraction: float = 0.33,
                 augmentation: dict[str, Any] | None = None) -> None:
        self.volumes = list(volumes)
        self.patch_size = list(patch_size)
        self.fg = float(foreground_fraction)
        aug = dict(augmentation or {})
        self.flip = bool(aug.pop("flip", True))
        self.intensity = float(aug.pop("intensity", 0.1))
        if aug:
            raise ValueError(f"unknown data.augmentation keys {sorted(aug)} (known: flip, intensity)")

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        case_index, seed = key
        rng = np.random.default_rng(int(seed))
        img, lab = sample_patch(self.volumes[case_index], self.patch_size, rng, self.fg, self.flip, self.intensity)
        return {"image": torch.from_numpy(img), "label": torch.from_numpy(lab.astype(np.int64))}


class EpochPlan(Sampler):
    """Batch sampler yielding, for one rank, the sample keys of each iteration of an epoch.

    Cases are visited in concatenated random permutations (each case once per pass), seeded by
    ``(seed, epoch)``; sample ``j`` of the epoch gets the augmentation seed derived from
    ``(seed, epoch, j)``. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, num_cases: int, iterations: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if num_cases < 1:
            raise ValueError("no training cases")
        self.num_cases, self.iterations, self.batch = num_cases, iterations, batch_size
        self.seed, self.rank, self.world = int(seed), rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_keys(self) -> list[tuple[int, int]]:
        """All keys of the epoch, in global order (``iterations × world × batch``)."""
        n = self.iterations * self.world * self.batch
        rng = np.random.default_rng([self.seed, self.epoch, 0x5EED])
        passes = math.ceil(n / self.num_cases)
        order = np.concatenate([rng.permutation(self.num_cases) for _ in range(passes)])[:n]
        seeds = np.random.default_rng([self.seed, self.epoch, 0xA06]).integers(0, 2**62, size=n)
        return [(int(c), int(s)) for c, s in zip(order, seeds)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        keys = self.global_keys()
        g = self.world * self.batch
        for it in range(self.iterations):
            base = it * g + self.rank * self.batch
            yield keys[base:base + self.batch]

    def __len__(self) -> int:
        return self.iterations


def region_target(classes: torch.Tensor, out_channels: int) -> torch.Tensor:
    """BraTS classes ``(B, *sp)`` (0 bg, 1 NCR/NET, 2 ED, 3 ET) → float region target
    ``(B, 4, *sp)`` = (bg, ET, TC, WT) as the PANet outputs, or ``(B, 3, *sp)`` = (ET, TC, WT)."""
    et = classes == 3
    tc = (classes == 1) | et
    wt = classes > 0
    regions = [et, tc, wt] if out_channels == 3 else [~wt, et, tc, wt]
    if out_channels not in (3, 4):
        raise ValueError(f"a brats-regions model needs 3 (ET, TC, WT) or 4 (bg, ET, TC, WT) outputs, "
                         f"it has {out_channels}")
    return torch.stack(regions, dim=1).float()
