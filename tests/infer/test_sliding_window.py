"""Sliding-window inferer: parity with MONAI, padding, mirroring, streaming, fast paths."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from attnseg.infer import fastpath
from attnseg.infer.fastpath import (
    OneDNNConv3d,
    prepare_input,
    prepare_model,
    tune_malloc,
    unprepare_model,
)
from attnseg.infer.sliding_window import SlidingWindowInferer, importance_map, mirror_combinations, window_starts

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


def _net(dims: int = 3, cin: int = 2, cout: int = 3) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    # position-dependent output (norm over the window) so that blending actually matters
    return nn.Sequential(conv(cin, 8, 3, padding=1), norm(8), nn.LeakyReLU(), conv(8, cout, 1)).eval()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape,roi,overlap,swb", [
    ((1, 2, 23, 18, 15), (8, 8, 8), 0.5, 1),
    ((2, 2, 20, 17, 9), (8, 6, 12), (0.25, 0.5, 0.6), 3),   # roi larger than axis 2: padding
    ((1, 2, 31, 29), (12, 10), 0.5, 2),                      # 2D
])
def test_matches_monai(shape, roi, overlap, swb, blend):
    dims = len(shape) - 2
    net = _net(dims)
    x = torch.randn(shape)
    ref = sliding_window_inference(x, roi, swb, net, overlap=overlap, mode=blend)
    out = SlidingWindowInferer(roi, overlap=overlap, sw_batch_size=swb, blend=blend)(x, net)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4, rtol=0), (out - ref).abs().max()


def test_matches_monai_with_fastpaths_and_sigma():
    net = _net(3)
    x = torch.randn(1, 2, 21, 19, 17)
    ref = sliding_window_inference(x, (10, 10, 10), 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.25)
    fast = prepare_model(_net(3), 3)
    inf = SlidingWindowInferer((10, 10, 10), overlap=0.5, blend="gaussian", sigma_scale=0.25, channels_last=True)
    out = inf(x, fast)
    assert torch.allclose(out, ref, atol=1e-4, rtol=0)


def test_window_grid_and_map_match_monai():
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, roi, ov in [(240, 128, 0.5), (155, 128, 0.5), (155, 96, 0.5), (37, 8, 0.75), (7, 7, 0.5)]:
        interval = _get_scan_interval((size,), (roi,), 1, (ov,))
        ref = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
        assert window_starts(size, roi, ov) == ref
    for roi in [(8, 12, 5), (16, 16)]:
        ref = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125)
        assert torch.allclose(importance_map(roi, "gaussian", 0.125), ref, atol=1e-7)


def test_constant_blend_of_constant_predictor_is_exact():
    x = torch.zeros(1, 1, 19, 13, 11)
    out = SlidingWindowInferer(8, overlap=0.5, blend="gaussian")(x, lambda w: torch.full_like(w, 3.0))
    assert torch.allclose(out, torch.full_like(x, 3.0), atol=1e-6)


def test_mirroring_averages_flips():
    x = torch.randn(1, 1, 8, 8, 8)
    # predictor that depends on position: x + a ramp along axis 0; mirroring averages the ramp
    ramp = torch.arange(8.0).view(1, 1, 8, 1, 1)
    out = SlidingWindowInferer(8, mirror_axes=(0,))(x, lambda w: w + ramp)
    expected = x + (ramp + ramp.flip(2)) / 2
    assert torch.allclose(out, expected, atol=1e-6)
    assert mirror_combinations((2, 0)) == [(), (0,), (2,), (0, 2)]


def test_probs_and_dict_outputs():
    x = torch.randn(1, 2, 10, 10, 10)
    net = _net(3)
    logits = SlidingWindowInferer(6)(x, net)
    probs = SlidingWindowInferer(6, output="probs", activation="softmax")(x, lambda w: {"out": net(w)})
    assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-6)
    sig = SlidingWindowInferer(6, output="probs")(x, net)
    assert torch.allclose(sig, torch.sigmoid(logits), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        SlidingWindowInferer(8, overlap=1.0)
    with pytest.raises(ValueError, match="blend"):
        SlidingWindowInferer(8, blend="tri")
    with pytest.raises(ValueError, match="spatial dimensions"):
        SlidingWindowInferer((8, 8))(torch.zeros(1, 1, 8, 8, 8), lambda w: w)
    with pytest.raises(ValueError, match="does not match"):
        SlidingWindowInferer(8)(torch.zeros(1, 1, 8, 8, 8), lambda w: w[..., :4])


def test_streaming_calls_predictor_per_window_batch():
    # 3 x 3 x 3 windows, batch 2 → 14 calls, each at most 2 windows; never all windows at once
    sizes = []

    def pred(w):
        sizes.append(w.shape[0])
        return w

    SlidingWindowInferer(8, overlap=0.5, sw_batch_size=2, split_cpu_batches=False)(torch.zeros(1, 1, 16, 16, 16), pred)
    assert sum(sizes) == 27 and max(sizes) == 2 and len(sizes) == 14


def test_cpu_window_batches_run_one_window_at_a_time_with_equal_outputs():
    net = _net(3)
    x = torch.randn(2, 2, 20, 17, 9)
    sizes = []

    def pred(w):
        sizes.append(w.shape[0])
        return net(w)

    split = SlidingWindowInferer((8, 6, 12), overlap=0.5, sw_batch_size=3)(x, pred)
    assert sizes and set(sizes) == {1}  # CPU default: one window per network call
    n_windows = len(sizes)
    sizes.clear()
    whole = SlidingWindowInferer((8, 6, 12), overlap=0.5, sw_batch_size=3, split_cpu_batches=False)(x, pred)
    assert max(sizes) == 3 and sum(sizes) == n_windows
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)


def test_streaming_keeps_at_most_one_window_output_alive():
    import weakref

    refs, alive = [], []

    def pred(w):
        alive.append(sum(r() is not None for r in refs))
        y = w * 2.0
        refs.append(weakref.ref(y))
        return y

    x = torch.randn(1, 1, 20, 20, 20)
    out = SlidingWindowInferer(8, overlap=0.5, sw_batch_size=2, split_cpu_batches=False)(x, pred)
    assert torch.allclose(out, 2 * x, atol=1e-5)
    assert len(alive) == 32 and max(alive) <= 1  # earlier outputs are released as soon as they are added


def test_onednn_conv_equals_default_and_keeps_state_dict(monkeypatch):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(4, 16, 3, padding=1), nn.InstanceNorm3d(16, affine=True), nn.ReLU(),
                        nn.Conv3d(16, 2, 3, stride=2, padding=1), nn.ConvTranspose3d(2, 2, 2, stride=2)).eval()
    nn.init.normal_(net[1].weight)
    x = torch.randn(1, 4, 12, 12, 12)
    with torch.no_grad():
        ref = net(x)
        keys = set(net.state_dict())
        fast = prepare_model(net, 3)
        assert isinstance(fast[0], OneDNNConv3d) and set(fast.state_dict()) == keys
        # every convolution goes straight to oneDNN; nothing reaches F.conv3d / F.conv_transpose3d,
        # whose size heuristic picks slow_conv3d / slow_conv_transpose3d for batch-1 inputs like these
        calls = []

        def spy(*args):
            calls.append(args[0].shape)
            return torch.ops.aten.mkldnn_convolution(*args)

        def forbidden(*args, **kwargs):
            raise AssertionError("default kernel path used")

        monkeypatch.setattr(fastpath, "_mkldnn_conv", spy)
        for name in ("conv3d", "conv_transpose3d", "instance_norm"):
            monkeypatch.setattr(torch.nn.functional, name, forbidden)
        out = fast(prepare_input(x))
        monkeypatch.undo()
    assert len(calls) == 2
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    unprepare_model(fast)
    assert [type(m) for m in fast] == [nn.Conv3d, nn.InstanceNorm3d, nn.ReLU, nn.Conv3d, nn.ConvTranspose3d]


@pytest.mark.parametrize("dims", [2, 3])
def test_patch_transpose_conv_equals_default(dims):
    torch.manual_seed(3)
    cls = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
    for k in (2, (2, 3, 1)[:dims]):
        m = cls(5, 3, k, stride=k).eval()
        x = torch.randn(2, 5, *(4, 5, 3)[:dims])
        with torch.no_grad():
            ref = m(x)
            out = prepare_model(m, dims)(x)
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)


def test_onednn_conv_gradients_match():
    torch.manual_seed(2)
    ref = nn.Conv3d(2, 4, 3, padding=1)
    fast = prepare_model(nn.Conv3d(2, 4, 3, padding=1), 3, channels_last=False)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 6, 6, 6)
    ref(x).square().sum().backward()
    fast(x).square().sum().backward()
    assert torch.allclose(ref.weight.grad, fast.weight.grad, rtol=1e-4, atol=1e-4)


def test_tune_malloc_is_harmless():
    assert tune_malloc() in (True, False)
    assert torch.ones(1 << 22).sum().item() == float(1 << 22)


def test_fast_instance_norm_is_accurate_on_large_channels_last_maps():
    # PyTorch's channels-last group-norm kernel is off by ~1e-4 here; the fast path must not be
    torch.manual_seed(4)
    norm = nn.InstanceNorm3d(4, affine=True).eval()
    nn.init.normal_(norm.weight)
    x = torch.randn(1, 4, 64, 64, 64) * 3 + 1
    with torch.no_grad():
        ref = torch.nn.functional.instance_norm(x.double(), weight=norm.weight.double(), bias=norm.bias.double())
        out = prepare_model(norm, 3)(prepare_input(x))
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert (out.double() - ref).abs().max() < 1e-5


def test_inplace_activations_only_after_fresh_outputs():
    seq = nn.Sequential(nn.LeakyReLU(), nn.Conv3d(1, 2, 1), nn.LeakyReLU(), nn.Dropout(), nn.ReLU()).eval()
    prepare_model(seq, 3)
    # first act sees the caller's tensor, last one follows a pass-through dropout: both untouched
    assert [getattr(m, "inplace", None) for m in seq] == [False, None, True, False, False]
    x = torch.randn(1, 1, 3, 3, 3)
    x0 = x.clone()
    seq(x)
    assert torch.equal(x, x0)
