"""Non-finite loss guard: skip a step whose loss (or gradient) is NaN/Inf, count it, and stop
after ``max_consecutive`` bad steps in a row before anything is saved from the bad state.

Used by the trainer for every precision (fp32, bf16 autocast, fp16 autocast). With a
GradScaler the guard looks at the *unscaled* loss before ``scaler.scale(loss).backward()``:
a non-finite loss is skipped here (no backward, no ``scaler.update()``), while overflowing
*gradients* of a finite loss stay the scaler's business (it skips the step and lowers the
scale); pass ``check_grads=False`` to :meth:`NonFiniteGuard.grads_ok` in that case.

>>> guard = NonFiniteGuard(max_consecutive=5)
>>> if guard.loss_ok(loss, epoch=e, iteration=it):   # raises NonFiniteLossError on the 5th in a row
...     loss.backward()
...     if guard.grads_ok(model.parameters(), epoch=e, iteration=it):   # ends the streak when finite
...         optimizer.step()

With a GradScaler: ``if guard.loss_ok(...): scaler.scale(loss).backward(); scaler.step(opt);
scaler.update(); guard.mark_good()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from attnseg.runtime.errors import FaultError


class NonFiniteLossError(FaultError):
    """Training stopped after too many consecutive non-finite steps."""


class NonFiniteGuard:
    """Counts skipped steps; ``last_good`` returns a description of the last good checkpoint.

    Args:
        max_consecutive: consecutive non-finite steps that stop training (>= 1).
        last_good: called when stopping; returns e.g. ``"runs/x/checkpoints/last.pt (epoch 3)"``.
        sync: turns the local "this step is bad" flag into a global one (e.g. an all-reduce MAX
            under DDP, so that every rank skips the same steps and no rank waits in backward).
        max_scaler_skips: consecutive steps a GradScaler may skip for overflowing gradients
            (each halves its scale; a few in a row are normal while the scale settles).
    """

    def __init__(self, max_consecutive: int = 5, last_good: Callable[[], str] | None = None,
                 sync: Callable[[bool], bool] | None = None, max_scaler_skips: int = 50) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.last_good = last_good or (lambda: "none written yet")
        self.sync = sync
        self.skipped = 0  # all skipped steps so far
        self.consecutive = 0  # current streak
        self.skipped_this_epoch = 0
        self.max_scaler_skips = int(max_scaler_skips)
        self.scaler_streak = 0

    def new_epoch(self) -> None:
        self.skipped_this_epoch = 0

    def _verdict(self, bad: bool, what: str, epoch: int, iteration: int) -> bool:
        if self.sync is not None:
            bad = self.sync(bad)
        if not bad:
            return True
        self.skipped += 1
        self.skipped_this_epoch += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"training stopped: {what} was NaN/Inf for {self.consecutive} consecutive steps (epoch {epoch}, "
                f"iteration {iteration}; {self.skipped} steps skipped in all); nothing was saved from this state; "
                f"last good checkpoint: {self.last_good()}; lower train.optimizer.lr or set train.grad_clip, "
                f"then resume from it")
        return False

    def loss_ok(self, loss: torch.Tensor, *, epoch: int, iteration: int) -> bool:
        """True when ``loss`` is finite (take the step); False: skip it (counted)."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        return self._verdict(bad, "the loss", epoch, iteration)

    def grads_ok(self, params: Iterable[torch.nn.Parameter], *, epoch: int, iteration: int,
                 total_norm: torch.Tensor | None = None) -> bool:
        """True when every gradient is finite. ``total_norm``: a norm already computed (by
        gradient clipping) that saves the extra pass."""
        if total_norm is None:
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                self.mark_good()
                return True
            total_norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=None)
        bad = not bool(torch.isfinite(total_norm))
        ok = self._verdict(bad, "the gradient", epoch, iteration)
        if ok:
            self.mark_good()
        return ok

    def scaler_step(self, skipped: bool, *, epoch: int, iteration: int) -> None:
        """Record whether the GradScaler skipped this step (its scale went down); stops training
        when it skipped ``max_scaler_skips`` steps in a row (it would otherwise skip forever)."""
        if not skipped:
            self.scaler_streak = 0
            self.mark_good()
            return
        self.skipped += 1
        self.skipped_this_epoch += 1
        self.scaler_streak += 1
        if self.scaler_streak >= self.max_scaler_skips:
            raise NonFiniteLossError(
                f"training stopped: the GradScaler found Inf/NaN gradients in {self.scaler_streak} consecutive "
                f"steps (epoch {epoch}, iteration {iteration}); nothing was saved from this state; last good "
                f"checkpoint: {self.last_good()}; use precision bf16 or fp32, a lower learning rate or "
                f"train.grad_clip, then resume from it")

    def mark_good(self) -> None:
        """A step was taken: the streak of bad steps ends (:meth:`grads_ok` calls it; call it
        yourself after ``scaler.step`` when gradients are left to the GradScaler)."""
        self.consecutive = 0
