"""Tiny data, checkpoints and a subprocess runner shared by the fault-injection tests (not a test module)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from attnseg.models import create_model
from attnseg.train.checkpoint import model_checkpoint, save_checkpoint

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SHAPE = (13, 11, 9)
MODS = ("t1", "t1ce", "t2", "flair")
UNET = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "features": (4, 8)}


def make_checkpoint(path: Path, **extra) -> Path:
    """A random (seeded) tiny U-Net: outputs differ between cases, so a mix-up would show."""
    torch.manual_seed(0)
    model = create_model("unet", **UNET)
    task = {"kind": "brats-regions", "num_classes": 4, "in_channels": 4, "channel_names": list(MODS),
            "label_convention": "brats", "patch_size": [8, 8, 8],
            "preprocess": {"crop_nonzero": True, "normalize": "zscore"}}
    extra.setdefault("task", task)
    return save_checkpoint(model_checkpoint("unet", UNET, model.state_dict(), **extra), path)


def write_cases(root: Path, n: int) -> list[str]:
    """``n`` BraTS-2020-layout cases of SHAPE with different random intensities."""
    ids = []
    for i in range(n):
        cid = f"Case_{i:03d}"
        d = root / cid
        d.mkdir(parents=True)
        rng = np.random.default_rng(i)
        brain = np.zeros(SHAPE, bool)
        brain[2:11, 3:9, 1:8] = True
        for m in MODS:
            img = np.where(brain, rng.normal(100, 20, SHAPE), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.2, 2.5, 1.0])), d / f"{cid}_{m}.nii.gz")
        ids.append(cid)
    return ids


def labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def run_script(code: str, *args: str, timeout: float = 240, cwd: Path | None = None,
               extra_path: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh interpreter, one thread, ``args`` as ``sys.argv[1:]``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


# first lines of every injected script: one thread, the CLI entry point
PRELUDE = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from attnseg.cli.main import main
"""
