"""Optional dependencies: import one by name, or fail with one line that names the extra to install.

The core install (torch, numpy, scipy, nibabel, pyyaml, tqdm) covers models, training and
prediction. Features that need more live in extras (see ``pyproject.toml``)::

    onnx         onnx, onnxscript, onnxruntime    attnseg export --format onnx
    tensorboard  tensorboard                      event files next to metrics.csv
    itk          SimpleITK                        reading .nrrd/.mha/.mhd images
    phantom      nilearn                          the built-in phantom data (attnseg data synth*, demo)
    report       matplotlib                       figures: curves, reports, CAM overlays

Every place that uses one calls :func:`require` inside the function that needs it, so that
``import attnseg.<anything>`` never needs an extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (distribution name, extra)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "torch.utils.tensorboard": ("tensorboard", "tensorboard"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "SimpleITK": ("SimpleITK", "itk"),
    "nilearn": ("nilearn", "phantom"),
    "matplotlib": ("matplotlib", "report"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message is one line naming the extra."""


def missing_message(module: str, extra: str | None = None, feature: str | None = None) -> str:
    """One line: what is missing, for what, and the ``pip install 'attnseg[extra]'`` that adds it."""
    top = module.split(".")[0]
    dist, known_extra = EXTRAS.get(module, EXTRAS.get(top, (top, None)))
    extra = extra or known_extra
    what = f" ({feature})" if feature else ""
    fix = f"pip install 'attnseg[{extra}]'" if extra else f"pip install {dist}"
    return f"{dist} is not installed{what}: {fix}"


def require(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module`` and return it; raise :class:`MissingExtraError` (an ``ImportError``)
    with one line naming the extra when it, or a package it needs, is not installed.

    ``extra`` defaults to the entry of :data:`EXTRAS`; ``feature`` is a few words for the message
    (e.g. ``"ONNX export"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(missing_message(module, extra, feature)) from exc


def available(module: str) -> bool:
    """Whether ``module`` can be imported (for optional speed-ups that fall back silently)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def pyplot(feature: str | None = None) -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (files only, never a window); needs ``attnseg[report]``."""
    matplotlib = require("matplotlib", feature=feature)
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
