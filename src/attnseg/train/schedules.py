"""Optimisers and learning-rate schedules stepped once per training iteration.

Every schedule is a function of the step count ``s`` (number of ``step()`` calls so far):
``lr_g(s) = base_lr_g · factor(s)`` for each parameter group ``g``. Its state is one integer,
so checkpoints stay ``weights_only``-loadable and a resumed run gets exactly the same rates.

With ``L`` iterations per epoch the epoch-based settings become step counts:

* ``constant``: factor 1.
* ``step``: ``gamma ** floor(s / (step_epochs·L))`` (AMIS default: 10 epochs, γ 0.1).
* ``poly``: ``(1 − s/T) ** power`` with ``T = epochs·L`` (nnU-Net style, power 0.9).
* ``warmup_cosine``: the PANet reference's ``CosineAnnealingWithWarmUp``, with
  ``W = warmup_epochs·L``, ``M = flat_epochs·L``, ``T = epochs·L``,
  ``lr_min = lr_max·min_lr_ratio`` (reference: 1/1000)::

      s < W          lr = lr_min + (lr_max − lr_min)·s/W
      W ≤ s < W+M    lr = lr_max
      s ≥ W+M        lr = lr_min + (lr_max − lr_min)·(1 + cos(π·(s−W−M)/(T−W−M)))/2

  so ``s = 0`` (right after construction) gives ``lr_min``.
* ``plateau``: ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode max) stepped with the
  validation metric after each validation (not per iteration).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum, Nesterov) from the ``train.optimizer`` config section."""
    name = str(cfg.get("name", "adam")).lower()
    lr = float(cfg.get("lr", 1e-3))
    wd = float(cfg.get("weight_decay", 0.0))
    if name in ("adam", "adamw"):
        betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "sgd":
        momentum = float(cfg.get("momentum", 0.99))
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd,
                               nesterov=bool(cfg.get("nesterov", True)) and momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}; known: adam, adamw, sgd")


class IterationSchedule:
    """LR schedule as a pure function of the step count (see module doc)."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, iterations_per_epoch: int, epochs: int,
                 warmup_epochs: float = 5, flat_epochs: float = 35, min_lr_ratio: float = 1e-3,
                 step_epochs: float = 10, gamma: float = 0.1, power: float = 0.9) -> None:
        if name not in ("constant", "step", "poly", "warmup_cosine"):
            raise ValueError(f"unknown schedule {name!r}; known: constant, step, poly, warmup_cosine, plateau")
        L = int(iterations_per_epoch)
        self.optimizer, self.name = optimizer, name
        self.total = int(epochs) * L
        self.warmup = int(round(warmup_epochs * L))
        self.flat = int(round(flat_epochs * L))
        self.step_size = max(int(round(step_epochs * L)), 1)
        self.min_ratio, self.gamma, self.power = float(min_lr_ratio), float(gamma), float(power)
        if name == "warmup_cosine" and self.warmup + self.flat > self.total:
            raise ValueError(f"warmup_cosine: warm-up ({warmup_epochs}) + flat ({flat_epochs}) epochs exceed "
                             f"the {epochs} training epochs")
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, b in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = b
        self.step_count = 0
        self._apply()

    def factor(self, s: int) -> float:
        """Multiplier of the base LR after ``s`` steps."""
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** (s // self.step_size)
        if self.name == "poly":
            return max(1.0 - s / max(self.total, 1), 0.0) ** self.power
        lo = self.min_ratio
        if s < self.warmup:
            return lo + (1.0 - lo) * s / self.warmup
        if s < self.warmup + self.flat:
            return 1.0
        frac = min((s - self.warmup - self.flat) / max(self.total - self.warmup - self.flat, 1), 1.0)
        return lo + (1.0 - lo) * (1.0 + math.cos(math.pi * frac)) / 2.0

    def lr_at(self, s: int) -> list[float]:
        return [b * self.factor(s) for b in self.base_lrs]

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.lr_at(self.step_count)):
            g["lr"] = lr

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint schedule {state.get('name')!r} differs from the configured {self.name!r}")
        self.base_lrs = list(state["base_lrs"])
        self.step_count = int(state["step_count"])
        self._apply()


class PlateauSchedule:
    """``ReduceLROnPlateau`` on the validation metric (higher is better); ``step()`` per
    iteration is a no-op, :meth:`step_metric` is called after each validation."""

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int = 100, factor: float = 0.1) -> None:
        self.optimizer = optimizer
        self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor,
                                                                patience=int(patience))
        self.name = "plateau"

    def step(self) -> None:
        pass

    def step_metric(self, value: float) -> None:
        self.inner.step(value)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.inner.state_dict().items() if isinstance(v, (int, float, str, list, bool))}
        state["lrs"] = self.get_last_lr()
        return {"name": "plateau", "inner": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        inner = dict(state["inner"])
        lrs = inner.pop("lrs")
        self.inner.load_state_dict({**self.inner.state_dict(), **inner})
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr


def build_schedule(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], iterations_per_epoch: int,
                   epochs: int) -> IterationSchedule | PlateauSchedule:
    """Schedule from the ``train.schedule`` config section."""
    name = str(cfg.get("name", "warmup_cosine")).lower()
    if name == "plateau":
        return PlateauSchedule(optimizer, cfg.get("patience", 100), cfg.get("factor", 0.1))
    keys = ("warmup_epochs", "flat_epochs", "min_lr_ratio", "step_epochs", "gamma", "power")
    return IterationSchedule(optimizer, name, iterations_per_epoch, epochs, **{k: cfg[k] for k in keys if k in cfg})
