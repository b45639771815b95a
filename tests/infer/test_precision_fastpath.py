"""CPU fast paths (attnseg.infer.fastpath) in bf16/fp16 and the strided 1×1 convolution guard,
at sizes that reach every path (thresholds lowered)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from attnseg.infer import fastpath


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("affine", [True, False])
def test_in_place_instance_norm_low_precision(dtype, affine):
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 6, 5, 4) * 4 + 7).to(dtype)  # a large mean: centring matters
    w = torch.rand(3) + 0.5 if affine else None
    b = torch.randn(3) if affine else None
    ref = F.instance_norm(x.double(), weight=None if w is None else w.double(),
                          bias=None if b is None else b.double(), eps=1e-5)
    with torch.no_grad():
        y = fastpath._instance_norm_inplace(x.clone(), w, b, 1e-5)
    assert y.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    # within the output format's rounding of values of size ~3 (statistics in float32)
    assert (y.double() - ref).abs().max() < tol * 3


def test_norm_swap_routes_bf16_through_the_in_place_path(monkeypatch):
    monkeypatch.setattr(fastpath, "_INPLACE_NORM_MIN", 0)
    seq = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True)).eval()
    with torch.no_grad():
        seq[1].weight.uniform_(0.5, 1.5)
        seq[1].bias.uniform_(-1, 1)
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = seq(x)
    fastpath.prepare_model(seq, 3, channels_last=False)
    calls = []
    real = fastpath._instance_norm_inplace
    monkeypatch.setattr(fastpath, "_instance_norm_inplace", lambda t, *a: calls.append(t.dtype) or real(t, *a))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = seq(x)
    assert calls == [torch.bfloat16] and y.dtype == torch.bfloat16
    assert (y.float() - ref.float()).abs().max() < 0.05


@pytest.mark.parametrize("nd", [2, 3])
def test_strided_pointwise_conv_equals_conv(nd):
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(4, 8, 1, stride=2)
    x = torch.randn(2, 4, *([9] * nd), requires_grad=True)  # odd size: ceil(9 / 2) = 5 outputs
    ref = conv(x)
    gref = torch.autograd.grad(ref.square().sum(), [x, conv.weight])
    fastpath.prepare_model(conv, nd)
    x2 = fastpath.prepare_input(x.detach()).requires_grad_()
    y = conv(x2)
    g = torch.autograd.grad(y.square().sum(), [x2, conv.weight])
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-5)
    for a, b in zip(g, gref):
        assert torch.allclose(a, b, atol=1e-4)


def test_strided_pointwise_channels_last_backward_does_not_corrupt_the_heap():
    # torch 2.13 CPU, one thread: the backward of this convolution on a channels-last input
    # aborted with "double free or corruption" within a few iterations (3 runs out of 3)
    code = """
import torch
from attnseg.infer import fastpath
torch.set_num_threads(1)
conv = fastpath.prepare_model(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1, stride=2)), 2)
for _ in range(50):
    x = fastpath.prepare_input(torch.randn(2, 4, 16, 16)).requires_grad_()
    conv(x).square().mean().backward()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_onednn_conv_under_autocast_matches_autocast_conv(dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 5, 6, 7)
    with torch.autocast("cpu", dtype=dtype):
        ref = conv(x)
    fastpath.prepare_model(conv, 3)
    with torch.autocast("cpu", dtype=dtype):
        y = conv(fastpath.prepare_input(x))
    assert y.dtype == ref.dtype == dtype
    assert torch.allclose(y.float(), ref.float(), atol=2e-2)
