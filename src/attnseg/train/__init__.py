"""Training: losses, schedules, the training loop, checkpoints and distributed training.

``run_training(config) -> RunResult`` is the Python entry point (``attnseg train`` calls it);
heavy submodules are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "RunResult", "load_yaml", "resolve_config", "run_training"]


def __getattr__(name: str) -> Any:
    if name in ("run_training", "RunResult"):
        from attnseg.train import trainer

        return getattr(trainer, name)
    if name in ("DEFAULTS", "load_yaml", "resolve_config"):
        from attnseg.train import config

        return getattr(config, name)
    raise AttributeError(f"module 'attnseg.train' has no attribute {name!r}")
