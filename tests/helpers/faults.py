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
               extra_path: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh interpreter, one thread, ``args`` as ``sys.argv[1:]``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
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


# ----------------------------------------------------------------------------------------------
# training through the CLI

from helpers.tiny import tiny_config, write_brats  # noqa: E402, F401 (write_brats re-exported)

# A plugin module (imported through model.imports) registering "faulty-unet": a U-Net whose
# forward misbehaves as the FAULTPLUG environment variable says:
#   nan:3,5   NaN output on the 3rd and 5th training forward;  nan:4+  from the 4th on
#   oom-eval  the CPU allocator's out-of-memory error in every evaluation forward
#   block:DIR  the first training forward writes DIR/started and waits for DIR/go
PLUGIN = '''
import os, time
from pathlib import Path
import torch
from attnseg.models import MODELS, register_model
from attnseg.models.unet import UNet

class FaultyUNet(UNet):
    calls = 0

    def forward(self, x):
        mode = os.environ.get("FAULTPLUG", "")
        y = super().forward(x)
        if not self.training:
            if mode == "oom-eval":
                raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8796093022208 bytes.")
            return y
        FaultyUNet.calls += 1
        if mode.startswith("block:") and FaultyUNet.calls == 1:
            d = Path(mode[6:])
            (d / "started").write_text(str(os.getpid()))
            t0 = time.time()
            while not (d / "go").exists() and time.time() - t0 < 120:
                time.sleep(0.05)
        if mode.startswith("nan:"):
            spec = mode[4:]
            bad = (FaultyUNet.calls >= int(spec[:-1])) if spec.endswith("+") else \\
                FaultyUNet.calls in {int(v) for v in spec.split(",")}
            if bad:
                return {k: v * float("nan") for k, v in y.items()} if isinstance(y, dict) else y * float("nan")
        return y

def build(**kw):
    FaultyUNet.calls = 0  # counted per run (the module stays imported between in-process runs)
    return FaultyUNet(**kw)

if "faulty-unet" not in MODELS:
    register_model("faulty-unet", family="test")(build)
'''


def write_plugin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "faultplug.py").write_text(PLUGIN)
    return folder


def train_config(tmp: Path, name: str, data: Path, plugin: bool = False, **over) -> Path:
    """A YAML config of a tiny 4-channel run on ``data`` (BraTS layout) written to ``tmp/<name>.yaml``."""
    import yaml

    cfg = tiny_config(tmp / "runs", name, in_channels=4, **over)
    cfg["data"]["root"] = str(data)
    cfg["data"]["cache_dir"] = str(tmp / "cache")
    cfg["device"] = "cpu"
    if plugin:
        cfg["model"]["name"] = "faulty-unet"
        cfg["model"]["imports"] = ["faultplug"]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    from attnseg.train.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]
