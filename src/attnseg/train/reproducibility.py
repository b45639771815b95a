"""What makes a run repeatable and traceable: the global seeds, and the environment written to
``env.json`` in the run folder.

The RNG state saved in checkpoints and the deterministic-algorithm flags are device-aware and
live with the other device helpers in :mod:`attnseg.train.distributed` (``rng_state``,
``set_rng_state``, ``configure_determinism``).
"""

from __future__ import annotations

import platform
import random
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnseg import __version__


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (NumPy takes ``seed mod 2**32``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def env_info(device: torch.device, world: int) -> dict[str, Any]:
    """Versions, host, device, world size, thread count, argv and git commit of this process
    (``None`` for a package that is not installed or a checkout without git)."""
    info: dict[str, Any] = {
        "attnseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "host": socket.gethostname(),
        "device": str(device), "world_size": world, "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda, "argv": sys.argv,
    }
    for mod in ("monai", "nibabel", "SimpleITK"):
        try:  # metadata only: importing MONAI would take seconds
            info[mod] = version(mod)
        except PackageNotFoundError:
            info[mod] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        here = Path(__file__).resolve().parent
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                            timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info
