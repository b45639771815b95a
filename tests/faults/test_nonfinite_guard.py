"""The non-finite guard under fp16 autocast on the CPU, with and without a GradScaler (the
path a CUDA fp16 run takes): an overflowing step is skipped, the weights stay as they were, and
a streak stops training with the epoch, iteration and last good checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnseg.train.guard import NonFiniteGuard, NonFiniteLossError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.float16):
        y = model(x)
    return (y.float() ** 2).mean()


def test_fp16_autocast_overflow_is_skipped_and_a_streak_stops():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    guard = NonFiniteGuard(max_consecutive=2, last_good=lambda: "run/checkpoints/last.pt (epoch 3)")
    huge = torch.full((1, 1, 6, 6, 6), 1e5)  # beyond fp16 (max 65504): autocast overflows to inf
    loss = _loss(model, huge)
    assert not torch.isfinite(loss)
    assert guard.loss_ok(loss, epoch=4, iteration=31) is False  # skipped: no backward, no step
    assert guard.skipped == 1 and guard.consecutive == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    good = _loss(model, torch.randn(1, 1, 6, 6, 6))
    assert guard.loss_ok(good, epoch=4, iteration=32)
    opt.zero_grad()
    good.backward()
    assert guard.grads_ok(model.parameters(), epoch=4, iteration=32)  # ends the streak
    opt.step()
    assert guard.consecutive == 0
    assert guard.loss_ok(_loss(model, huge), epoch=4, iteration=33) is False
    with pytest.raises(NonFiniteLossError, match=r"NaN/Inf for 2 consecutive steps \(epoch 4, iteration 34; "
                                                 r"3 steps skipped in all\).*last good checkpoint: "
                                                 r"run/checkpoints/last.pt \(epoch 3\)"):
        guard.loss_ok(_loss(model, huge), epoch=4, iteration=34)


def test_fp16_gradscaler_skips_are_counted_apart_from_the_loss_streak():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # big enough to overflow fp16 gradients
    guard = NonFiniteGuard(max_consecutive=2)  # max_scaler_skips=50
    x = torch.randn(1, 1, 6, 6, 6)
    skipped = []
    for it in range(1, 40):
        loss = _loss(model, x)
        assert guard.loss_ok(loss, epoch=1, iteration=it)  # the loss itself is finite
        opt.zero_grad()
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped.append(scaler.get_scale() < scale)
        guard.scaler_step(skipped[-1], epoch=1, iteration=it)
        if not skipped[-1]:
            break
    # the scaler halved its scale until the gradients fit: those steps are counted, not fatal
    assert len(skipped) > 2 and skipped[-1] is False
    assert guard.skipped == len(skipped) - 1 and guard.scaler_streak == 0 and guard.consecutive == 0
    short = NonFiniteGuard(max_scaler_skips=3)
    short.scaler_step(True, epoch=2, iteration=100)
    short.scaler_step(True, epoch=2, iteration=101)
    with pytest.raises(NonFiniteLossError, match=r"GradScaler found Inf/NaN gradients in 3 consecutive steps "
                                                 r"\(epoch 2, iteration 102\)"):
        short.scaler_step(True, epoch=2, iteration=102)
