"""Tiny synthetic datasets and configs shared by the training tests (not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnseg.train.data import Volume

SHAPE = (16, 16, 16)


def tiny_case(rng: np.random.Generator, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A cube lesion with nested classes (ED shell, NCR, ET core) and matching contrasts."""
    lab = np.zeros(SHAPE, np.uint8)
    c = rng.integers(5, 11, 3)
    for r, v in ((3, 2), (2, 1), (1, 3)):
        lab[c[0] - r:c[0] + r, c[1] - r:c[1] + r, c[2] - r:c[2] + r] = v
    signs = np.array([1.0, -1.0, 0.5, 2.0][:channels], np.float32).reshape(-1, 1, 1, 1)
    img = 1.0 + rng.normal(size=(channels, *SHAPE)).astype(np.float32) * 0.3 + lab[None] * signs
    return img.astype(np.float32), lab


def tiny_volumes(n: int, seed: int, channels: int = 2) -> list[Volume]:
    rng = np.random.default_rng(seed)
    return [Volume(f"c{seed}_{i}", *tiny_case(rng, channels)) for i in range(n)]


def write_brats(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` 16³ cases in the BraTS 2020 layout (labels 0/1/2/4)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    for i in range(n):
        cid = f"BraTS20_Training_{i:03d}"
        d = root / cid
        d.mkdir(parents=True)
        img, lab = tiny_case(rng, 4)
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        for k, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            nib.save(nib.Nifti1Image((img[k] * 100).astype(np.int16), aff), d / f"{cid}_{mod}.nii.gz")
        seg = np.array([0, 1, 2, 4], np.uint8)[lab]
        nib.save(nib.Nifti1Image(seg, aff), d / f"{cid}_seg.nii.gz")
    return root


def tiny_config(out: Path, name: str, in_channels: int = 2, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name, "output_dir": str(out), "seed": 3, "device": "cpu",  # pinned: never the GPU of a CI host
        "model": {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": in_channels, "out_channels": 4,
                                             "features": [4, 8, 8]}},
        "task": {"kind": "brats-regions", "num_classes": 4, "in_channels": in_channels},
        "data": {"patch_size": [16, 16, 16], "batch_size": 2, "foreground_fraction": 0.5},
        "train": {"epochs": 4, "iterations_per_epoch": 1,
                  "schedule": {"name": "warmup_cosine", "warmup_epochs": 1, "flat_epochs": 1}},
        "validation": {"interval": 4},
        "log": {"tensorboard": False, "curves": False},
    }
    for k, v in over.items():
        node = cfg
        keys = k.split("__")
        for kk in keys[:-1]:
            node = node.setdefault(kk, {})
        node[keys[-1]] = v
    return cfg
