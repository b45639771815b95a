"""Precision findings reproduced with CPU autocast (fp16 and bf16 run the same module code as on a
GPU): DANet's channel energy overflowing fp16 at 64³, the spatial transformer's half-precision
grid, normalisation statistics, and losses that mixed devices (checked on the ``meta`` device)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnseg.attention.dual import ChannelSelfAttention, DualAttention
from attnseg.attention.stn import SpatialTransformer


def test_danet_channel_energy_overflows_fp16_at_64_cubed_and_the_module_stays_finite():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 64, 64, 64)
    f = x.flatten(2)
    # the finding: Σ over 262144 voxels of a unit-scale square is ~2.6e5 > 65504 (fp16's max)
    with torch.autocast("cpu", dtype=torch.float16):
        naive = f @ f.transpose(1, 2)
    assert naive.dtype == torch.float16 and torch.isinf(naive).any()
    m = DualAttention(4, 3)
    with torch.no_grad():
        m.position.gamma.fill_(0.1)
        m.channel.gamma.fill_(0.1)
    with torch.no_grad():
        ref = m(x)
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        y = m(xg)
    assert torch.isfinite(y).all()
    assert float((y.detach().float() - ref).abs().max()) < 2e-2  # fp16 rounding of outputs of magnitude ~4
    y.float().square().mean().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(m.channel.gamma.grad).all()
    # the attention matrix itself is float32 whatever autocast asks for
    with torch.autocast("cpu", dtype=torch.float16):
        a = ChannelSelfAttention(4).attention(f)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, ChannelSelfAttention(4).attention(f))


def _stn_case(n: int, size: int = 16) -> tuple[SpatialTransformer, torch.Tensor]:
    torch.manual_seed(0)
    m = SpatialTransformer(4, n)
    with torch.no_grad():  # a transform away from the identity
        m.fc2.bias.add_(torch.randn(n * (n + 1)) * 0.05)
        m.fc2.weight.normal_(0, 0.01)
    g = torch.linspace(0, 6.28, size)
    base = torch.sin(g)[:, None] * torch.cos(g)[None]
    if n == 3:
        base = base[..., None] * torch.sin(2 * g)
    x = base.expand(1, 4, *([size] * n)) * torch.arange(1.0, 5.0).view(1, 4, *([1] * n))
    return m, x.contiguous()


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stn_grid_and_sampling_are_float32_under_autocast(n, dtype):
    # before: the grid in half precision put samples up to ~0.25 voxel off (output errors 3e-2
    # fp16 / 1.5e-1..3.6e-1 bf16, affine-weight gradients 7e-3..1.7e-2 / 9e-2..1.5e-1)
    m, x = _stn_case(n)
    y = m(x)
    y.square().sum().backward()
    ref_y, ref_g = y.detach(), m.fc2.weight.grad.clone()
    m.zero_grad()
    with torch.autocast("cpu", dtype=dtype):
        theta = m.transform(x)
        y = m(x)
    assert theta.dtype == torch.float32 and y.dtype == x.dtype
    y.float().square().sum().backward()
    assert float((y - ref_y).abs().max()) < 2e-3
    assert float((m.fc2.weight.grad - ref_g).abs().max() / ref_g.abs().max()) < 3e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_normalisation_statistics_are_float32_under_autocast(dtype):
    """Σx² over a 64³ map of values ~100 is ~2.6e9: statistics in fp16 would be inf. The norms
    the models use keep them in float32; only the output is rounded to the autocast dtype."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 64, 64, 64) * 30 + 100
    ulp = 2 ** -10 if dtype == torch.float16 else 2 ** -7
    for m in (nn.InstanceNorm3d(4, affine=True), nn.GroupNorm(2, 4), nn.BatchNorm3d(4)):
        ref = m(x)
        with torch.autocast("cpu", dtype=dtype):
            y = m(x.to(dtype))
        assert torch.isfinite(y).all(), type(m).__name__
        # input rounding (|x| ~ 200 → ulp·200/30 after normalising) plus output rounding
        assert float((y.float() - ref).abs().max()) < ulp * (200 / 30 + 6), type(m).__name__


def test_boosted_loss_keeps_its_weights_on_the_logits_device():
    """``meta`` stands for a second device: the old forward concatenated a CPU zero with the
    coefficients moved to the logits' device ("Tensor on device meta is not on the expected
    device cpu")."""
    from attnseg.train.losses import CombinedBoostedLoss

    loss = CombinedBoostedLoss()
    coeff = loss.feedback(torch.tensor([0.5, 0.7, 0.9]))
    assert coeff.device == loss.coeff.device and coeff.dtype == torch.float32
    logits = torch.randn(2, 4, 4, 4, 4, device="meta")
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long, device="meta")
    assert loss(logits, target).device.type == "meta"
    # the boosting values themselves (AMIS formula) are unchanged
    d = torch.tensor([0.5, 0.7, 0.9])
    torch.testing.assert_close(coeff, (d.median() - (d.min() - 0.05)) / (d - (d.min() - 0.05)))


def test_stitching_stays_on_the_gpu_when_it_fits_and_falls_back_to_the_cpu(monkeypatch):
    from attnseg.infer import sliding_window as sw

    gpu = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (8 * 2**30, 80 * 2**30))
    assert sw.stitch_device(gpu, 3 * 2**30) == gpu  # a BraTS case's 4 × 240² × 155 fp32 is 0.14 GB
    assert sw.stitch_device(gpu, 5 * 2**30) == torch.device("cpu")  # more than half the free memory
    assert sw.stitch_device(torch.device("cpu"), 10**15) == torch.device("cpu")
    # device="auto" on a CPU input: the same result as stitching where the input is
    torch.manual_seed(0)
    x = torch.randn(1, 2, 20, 18, 16)
    net = nn.Conv3d(2, 3, 3, padding=1)
    kw = dict(overlap=0.5, blend="gaussian")
    a = sw.SlidingWindowInferer(8, device="auto", **kw)(x, net)
    b = sw.SlidingWindowInferer(8, **kw)(x, net)
    assert torch.equal(a, b)
    # the decision is taken with the real buffer size: batch × K + 1 weight map, padded volume
    asked = []
    monkeypatch.setattr(sw, "stitch_device", lambda d, n: asked.append(n) or d)
    sw.SlidingWindowInferer(8, device="auto", **kw)(x, net)
    assert asked == [(1 * 3 + 1) * 20 * 18 * 16 * 4]


def test_danet_keeps_its_pooling_matrices_on_the_input_device():
    """The pooling/interpolation matrices are cached per (size, device, dtype): a GPU forward no
    longer copies them from the CPU every time (``meta`` stands for the GPU)."""
    from attnseg.attention import dual

    m = DualAttention(8, 3, max_tokens=64).to("meta")
    x = torch.empty(1, 8, 12, 12, 12, device="meta")
    m.position.delta(x)  # the branch that pools and interpolates
    before = dual._matrix_on.cache_info()
    m.position.delta(x)
    after = dual._matrix_on.cache_info()
    assert after.misses == before.misses and after.hits > before.hits
    assert dual._matrix_on("pool", 12, 2, torch.device("meta"), torch.float32).device.type == "meta"
