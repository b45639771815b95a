"""Every registered model (and the U-Net with every plug-in attention module) × {fp32, bf16} ×
{training step, sliding-window prediction}, on any CPU (bf16 is emulated where the CPU lacks it:
slow, but correct), through the CPU fast paths the trainer and ``attnseg predict`` use, at
tiny sizes with the in-place-norm threshold lowered so that every path is reached.

bf16 is checked against fp32 (same weights, same input): loss, the gradient direction and the
blended logits agree to bf16's 8-bit mantissa; both train through plain autograd ops (no custom
autograd node in the trainer's channels-last path), which autocast casts op by op.
"""

from __future__ import annotations

import copy

import pytest
import torch

from attnseg.infer import fastpath
from attnseg.infer.sliding_window import SlidingWindowInferer
from attnseg.models import create_model, get_model_entry, list_models
from attnseg.models.sites import list_plugin_attention, valid_sites
from attnseg.train.losses import build_training_loss

# models with a hard decision inside (cascaded-unet thresholds stage 1 into a mask for stage 2):
# bf16 rounding flips the decision at a few voxels, so only mean errors are compared there
HARD = {"cascaded-unet"}


@pytest.fixture(autouse=True)
def _one_thread_low_thresholds(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(fastpath, "_INPLACE_NORM_MIN", 0)  # 8³ maps take the in-place norm
    yield
    torch.set_num_threads(n)


def _first_conv_in(model: torch.nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))).in_channels


def _build(case: tuple) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    """(model, training patch size, input channels) at a tiny size."""
    torch.manual_seed(0)
    if len(case) == 3:  # U-Net with a plug-in attention module
        _, dims, att = case
        size = (8, 8, 8)
        model = create_model("unet", spatial_dims=3, in_channels=2, out_channels=3, features=(4, 8),
                             attention=att, attention_at=valid_sites("unet", att)[:1], input_size=size)
        return model, size, 2
    name, dims = case
    entry = get_model_entry(name)
    kw = dict(entry.tags["test_kwargs"])
    if entry.tags["preset_of"]:  # AMIS presets: fixed widths, 16 slices (the size is their test_input tag)
        model = create_model(name, **kw)
        size = tuple(entry.tags["test_input"])
    elif entry.family == "panet":
        kw["strides"] = (1, 2, 2, 2) if dims == 3 else (1, 2, 2, 2, 2)
        model, size = create_model(name, spatial_dims=dims, **kw), (16,) * dims
    else:
        size = (8, 8, 8) if dims == 3 else (16, 16)
        model = create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, **kw)
        return model, size, 2
    return model, size, int(getattr(model, "in_channels", 0) or _first_conv_in(model))


def _cases() -> list:
    cases = [pytest.param((n, d), id=f"{n}-{d}d") for n in list_models() for d in get_model_entry(n).dims]
    cases += [pytest.param(("unet", 3, a), id=f"unet+{a}") for a in list_plugin_attention()]
    return cases


def _custom_nodes(loss: torch.Tensor) -> set[str]:
    """Names of the custom autograd nodes (torch.autograd.Function) in ``loss``'s graph."""
    seen, names, stack = set(), set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _train_step(model, x, lab, dtype):
    """One training step as the trainer runs it (fast path, autocast, loss, backward, SGD):
    (loss, flattened gradients, custom node names)."""
    model.train()
    crit = build_training_loss({"name": "dice_ce"}, "classes")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(fastpath.prepare_input(x))
    out = out if isinstance(out, dict) else {"out": out}
    wt = (lab > 0).float().unsqueeze(1)  # the whole-tumour target of the PANet family's prior
    loss, _ = crit(out, lab, wt)
    nodes = _custom_nodes(loss)
    opt.zero_grad()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    opt.step()
    assert torch.isfinite(grads).all() and all(torch.isfinite(p).all() for p in model.parameters())
    return loss.item(), grads, nodes


@pytest.mark.parametrize("case", _cases())
def test_model_precision_matrix(case, monkeypatch):
    model, size, cin = _build(case)
    fastpath.prepare_model(model, len(size))  # the trainer's fast path (channels-last, oneDNN)
    torch.manual_seed(1)
    x = torch.randn(2, cin, *size)
    lab = torch.randint(0, 3, (2, *size))
    twin = copy.deepcopy(model)
    l32, g32, n32 = _train_step(model, x, lab, None)
    l16, g16, n16 = _train_step(twin, x, lab, torch.bfloat16)
    assert abs(l16 - l32) <= 2e-3 * abs(l32) + 1e-3
    cos = torch.nn.functional.cosine_similarity(g32, g16, 0).item()
    print(f"{case}: loss {l32:.5f} {l16:.5f} gradient cosine {cos:.4f}")
    assert cos > (0.5 if case[0] in HARD else 0.85)
    # the custom autograd nodes that crashed under autocast are gone; none may reappear unnoticed
    assert not n32 and not n16, (n32, n16)

    # sliding-window prediction as attnseg predict runs it: eval-mode fast path (in-place norms)
    model.eval()._apply(lambda t: t.contiguous())  # as loaded by attnseg predict: channels-first weights
    fastpath.prepare_model(model, len(size), channels_last=False)
    inplace = any(getattr(m, "_attnseg_inplace", False) for m in model.modules())
    calls: list[torch.dtype] = []
    real = fastpath._instance_norm_inplace
    monkeypatch.setattr(fastpath, "_instance_norm_inplace", lambda t, *a: calls.append(t.dtype) or real(t, *a))
    vol = torch.randn(1, cin, *size[:-1], size[-1] + size[-1] // 2)  # two windows along the last axis
    y32 = SlidingWindowInferer(size)(vol, model)
    y16 = SlidingWindowInferer(size, precision="bf16")(vol, model)
    assert y32.shape == y16.shape == (1, y32.shape[1], *vol.shape[2:]) and y16.dtype == torch.float32
    scale = y32.abs().max().item()
    err = (y16 - y32).abs()
    print(f"{case}: logits max {scale:.3f}, bf16 error max {err.max():.4f} mean {err.mean():.5f}")
    assert err.mean() <= 0.02 * scale + 0.01
    assert case[0] in HARD or err.max() <= 0.1 * scale + 0.05
    assert err.max() > 0  # bf16 really ran
    if inplace:
        assert torch.float32 in calls and torch.bfloat16 in calls
