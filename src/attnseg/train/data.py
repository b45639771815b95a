"""Training data: cases, split, the patch pipeline of :mod:`attnseg.data` and the epoch plan.

Patches come from :class:`attnseg.data.dataset.PatchDataset` (foreground oversampling and the
patch-grid augmentations of :mod:`attnseg.data.augment`): sample ``j`` of epoch ``e`` is a pure
function of ``(seed, e, j)``. :class:`EpochPlan` hands each rank its indices of every global
batch, so an interrupted run that resumes at epoch ``e`` sees exactly the samples of an
uninterrupted run whatever the number of workers, and a DDP run with ``N`` ranks × batch ``b``
sees per iteration the same samples as one process with batch ``N·b`` (rank ``r`` takes items
``r·b … r·b+b−1`` of each global batch).

Cases read from disk go through the memory-mapped :class:`attnseg.data.cache.CaseCache`;
in-memory :class:`Volume` lists (Python API, tests) through :class:`MemoryCache`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Sampler

from attnseg.data.augment import AugmentConfig
from attnseg.data.cache import CachedCase, foreground_samples
from attnseg.data.dataset import PatchDataset
from attnseg.data.preprocess import preprocess_config  # noqa: F401 (old import path)
from attnseg.data.slices import SliceDataset
from attnseg.models import get_model_entry

if TYPE_CHECKING:
    from attnseg.data.augment import AugmentConfig
    from attnseg.data.dataset import PatchDataset


@dataclass
class Volume:
    """One case ready for sampling: ``image (C, *sp) float32``, ``label (*sp) uint8`` classes."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None = None


def cached_volume(case: Any) -> Volume:
    """A :class:`attnseg.data.cache.CachedCase` (memory-mapped) as a validation :class:`Volume`."""
    spacing = case.meta.get("processed_spacing")
    return Volume(case.case_id, case.image, case.label, tuple(float(s) for s in spacing) if spacing else None)


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


class MemoryCache:
    """In-memory stand-in for :class:`attnseg.data.cache.CaseCache` over :class:`Volume` objects."""

    def __init__(self, volumes: Sequence[Volume], fg_samples: int = 20000) -> None:
        self.cache_dir = "<memory>"
        self._cases = [CachedCase(v.case_id, np.asarray(v.image, np.float32), v.label,
                                  foreground_samples(v.label, fg_samples, seed=i), {})
                       for i, v in enumerate(volumes)]

    def __len__(self) -> int:
        return len(self._cases)

    def __getitem__(self, i: int):
        return self._cases[i]


def augment_config(cfg: dict[str, Any] | str | None) -> AugmentConfig:
    """``data.augmentation`` → :class:`attnseg.data.augment.AugmentConfig`: a dict of its fields
    (missing ones keep the data package's defaults) or the string ``"none"``."""
    if cfg in ("none", False):
        return AugmentConfig.none()
    kw = dict(cfg or {})
    for k in ("flip_axes", "rot90_axes", "scale", "gamma_range"):
        if isinstance(kw.get(k), list):
            kw[k] = tuple(kw[k])
    try:
        return AugmentConfig(**kw)
    except TypeError as exc:
        raise ValueError(f"data.augmentation: {exc}") from exc


def patch_dataset(cache: Any, patch_size: Sequence[int], samples_per_epoch: int, foreground_fraction: float,
                  augmentation: dict[str, Any] | str | None, seed: int,
                  case_indices: Sequence[int] | None = None, slice_axis: int | str | None = None,
                  context: int = 0) -> PatchDataset:
    """The data package's :class:`~attnseg.data.dataset.PatchDataset` with the training settings;
    with a ``slice_axis`` the 2-D/2.5-D :class:`~attnseg.data.slices.SliceDataset`."""
    kw = dict(samples_per_epoch=samples_per_epoch, fg_fraction=float(foreground_fraction),
              augment=augment_config(augmentation), seed=int(seed), case_indices=case_indices)
    if slice_axis is not None:
        return SliceDataset(cache, list(patch_size), axis=slice_axis, context=int(context), **kw)
    return PatchDataset(cache, list(patch_size), **kw)


def model_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The kwargs the model of a resolved config is built with: ``model.kwargs``, plus for 2-D
    models on volumes (``data.slice_axis`` set) ``spatial_dims=2`` and, in 2.5-D, input channels
    ``task.in_channels · (2·context + 1)``."""
    kw = dict(cfg["model"]["kwargs"])
    d, name = cfg["data"], cfg["model"]["name"]
    if d.get("slice_axis") is None:
        return kw

    try:
        entry = get_model_entry(name)
    except KeyError:
        return kw  # unknown names fail with the registry's message when the model is built
    if 2 not in entry.dims:
        raise ValueError(f"model {name!r} is 3-D only, but data.patch_size {d['patch_size']} / data.slice_axis "
                         f"{d['slice_axis']!r} ask for a 2-D model; use a 2-D capable model (attnseg models)")
    if int(kw.get("spatial_dims", 2)) != 2:
        raise ValueError(f"model.kwargs.spatial_dims={kw['spatial_dims']} but data.patch_size {d['patch_size']} "
                         f"(2-D slices) needs a 2-D model: drop model.kwargs.spatial_dims or set it to 2")
    kw["spatial_dims"] = 2
    k = int(d.get("context") or 0)
    if k:
        ch = int(cfg["task"]["in_channels"])
        given = kw.get("in_channels")
        if given is not None and int(given) not in (ch, ch * (2 * k + 1)):
            raise ValueError(f"model.kwargs.in_channels={given} fits neither task.in_channels={ch} nor the 2.5-D "
                             f"input of {ch}x{2 * k + 1}={ch * (2 * k + 1)} channels (data.context={k})")
        kw["in_channels"] = ch * (2 * k + 1)
    return kw


class EpochPlan(Sampler):
    """Batch sampler yielding, for one rank, its sample indices of each iteration of an epoch.

    An epoch has ``iterations × world × batch`` samples (the dataset's ``samples_per_epoch``);
    iteration ``k`` of rank ``r`` gets indices ``k·G + r·b … k·G + r·b + b − 1`` with
    ``G = world·b``. The dataset maps each index to a case and random draws from
    ``(seed, epoch, index)``; :meth:`set_epoch` forwards the epoch to it.
    """

    def __init__(self, dataset: Any, iterations: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.dataset, self.iterations, self.batch = dataset, int(iterations), int(batch_size)
        self.rank, self.world = int(rank), int(world_size)

    @property
    def samples_per_epoch(self) -> int:
        return self.iterations * self.world * self.batch

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.world * self.batch
        for it in range(self.iterations):
            base = it * g + self.rank * self.batch
            yield list(range(base, base + self.batch))

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
