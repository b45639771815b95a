"""fp16 + GradScaler: the trainer's CUDA recipe (autocast fp16, scale → backward → unscale_ →
clip → step → update) run on CPU, where autocast fp16 and ``GradScaler("cpu")`` exist, so the
fused attention paths and the scaler logic are exercised without a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from attnseg.infer import fastpath
from attnseg.models import create_model
from attnseg.train.step import clip_gradients

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


def _step(model, opt, scaler, x, dtype, grad_clip=12.0, poison=False):
    """The trainer's optimisation step; ``poison`` makes one gradient infinite before unscaling."""
    with torch.autocast("cpu", dtype=dtype or torch.float16, enabled=dtype is not None):
        out = model(x)
    loss = out["out"].float().square().mean() if isinstance(out, dict) else out.float().square().mean()
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        clip_gradients(model, grad_clip)
        opt.step()
        return loss
    scaler.scale(loss).backward()
    if poison:
        next(model.parameters()).grad.view(-1)[0] = float("inf")
    scaler.unscale_(opt)
    clip_gradients(model, grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss


@pytest.mark.parametrize("attention", ["scse", "pam-adaptive"])
def test_fp16_autocast_step_with_grad_scaler_matches_fp32(attention):
    torch.manual_seed(0)
    model = create_model("unet", spatial_dims=3, in_channels=2, out_channels=3, features=(4, 8),
                         attention=attention, attention_at=("encoder",))
    fastpath.prepare_model(model, 3)
    twin = copy.deepcopy(model)
    x = fastpath.prepare_input(torch.randn(2, 2, 8, 8, 8))
    opt32 = torch.optim.SGD(model.parameters(), lr=0.1)
    opt16 = torch.optim.SGD(twin.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    before = [p.detach().clone() for p in model.parameters()]
    l32 = _step(model, opt32, None, x, None)
    l16 = _step(twin, opt16, scaler, x, torch.float16)
    assert abs(l16.item() - l32.item()) <= 1e-2 * abs(l32.item())
    d32 = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    d16 = torch.cat([(p.detach() - b).flatten() for p, b in zip(twin.parameters(), before)])
    # the fp16 update (gradients unscaled before clipping) points where the fp32 one does
    assert torch.nn.functional.cosine_similarity(d32, d16, 0) > 0.95
    assert d16.norm() == pytest.approx(d32.norm().item(), rel=0.05)


def test_grad_scaler_skips_an_overflowing_step_and_backs_off():
    torch.manual_seed(0)
    model = create_model("unet", spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8), attention="cse",
                         attention_at=("encoder",))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=1)
    x = torch.randn(2, 1, 16, 16)
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, opt, scaler, x, torch.float16, poison=True)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # step skipped
    assert scaler.get_scale() == 2.0 ** 11  # backed off by half
    _step(model, opt, scaler, x, torch.float16)
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # then it steps
    assert scaler.get_scale() == 2.0 ** 12  # and grows again (growth_interval=1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
