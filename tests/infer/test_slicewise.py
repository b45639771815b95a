"""Slice-by-slice (2-D / 2.5-D) inference over volumes equals the 2-D model run on each slice by hand."""

import numpy as np
import pytest
import torch

from attnseg.data.slices import context_indices, parse_slice_axis, stack_slices
from attnseg.infer.slicewise import SliceInferer, slice_inferer
from attnseg.infer.sliding_window import SlidingWindowInferer
from attnseg.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


def _volume(c=2, shape=(12, 16, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((c, *shape), generator=g)


def _model(in_channels, out_channels=3, seed=0):
    torch.manual_seed(seed)
    return create_model("unet", spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                        features=[4, 8, 8]).eval()


def _by_hand_stack(vol: np.ndarray, axis: int, z: int, k: int) -> np.ndarray:
    """Slices z-k..z+k of every modality, edge slices repeated, in the documented channel order."""
    n = vol.shape[1 + axis]
    chans = []
    for c in range(vol.shape[0]):
        for d in range(-k, k + 1):
            zz = min(max(z + d, 0), n - 1)
            chans.append(np.take(vol[c], zz, axis=axis))
    return np.stack(chans)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [0, 2])
def test_stack_slices_layout_numpy_and_torch(axis, k):
    vol = _volume().numpy()
    zs = [0, 1, vol.shape[1 + axis] - 1]
    got_np = stack_slices(vol, axis, zs, k)
    got_t = stack_slices(torch.from_numpy(vol), axis, zs, k)
    for i, z in enumerate(zs):
        want = _by_hand_stack(vol, axis, z, k)
        np.testing.assert_array_equal(got_np[i], want)
        np.testing.assert_array_equal(got_t[i].numpy(), want)
    assert context_indices([0, 5], 6, 2).tolist() == [[0, 0, 0, 1, 2], [3, 4, 5, 5, 5]]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [0, 1])
def test_slicewise_equals_model_on_each_slice(axis, k):
    """Window = whole slice: every output slice is exactly the model's output on that slice's stack."""
    vol = _volume()
    model = _model(2 * (2 * k + 1))
    plane = [s for i, s in enumerate(vol.shape[1:]) if i != axis]
    inf = slice_inferer(plane, axis, k, slice_batch=5, blend="constant")
    out = inf(vol[None], model)[0]
    assert out.shape == (3, *vol.shape[1:])
    with torch.no_grad():
        for z in range(vol.shape[1 + axis]):
            x = torch.from_numpy(_by_hand_stack(vol.numpy(), axis, z, k))[None]
            want = model(x)[0]
            torch.testing.assert_close(out.select(1 + axis, z), want, atol=1e-5, rtol=1e-5)


def test_slices_larger_than_the_window_use_the_inplane_sliding_window():
    """Axial slices 12x16 with an 8x8 window: each slice equals the 2-D sliding window run on it alone."""
    vol = _volume()
    model = _model(2 * 3)
    inf = slice_inferer([8, 8], "axial", 1, slice_batch=3, overlap=0.5, blend="gaussian")
    out = inf(vol[None], model)[0]
    window = SlidingWindowInferer([8, 8], overlap=0.5, blend="gaussian")
    for z in range(vol.shape[3]):
        x = torch.from_numpy(_by_hand_stack(vol.numpy(), 2, z, 1))[None]
        torch.testing.assert_close(out[..., z], window(x, model)[0], atol=1e-5, rtol=1e-5)
    # and a padded window (slice smaller than the window) is cropped back to the slice
    big = slice_inferer([20, 20], "axial", 1)(vol[None], model)
    assert big.shape == (1, 3, 12, 16, 8) and torch.isfinite(big).all()


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_orthogonal_average_is_the_mean_of_the_three_directions(activation):
    vol = _volume(shape=(8, 8, 8))
    model = _model(2)
    per_axis = [slice_inferer([8, 8], a, 0, blend="constant")(vol[None], model)[0] for a in range(3)]
    both = slice_inferer([8, 8], "all", 0, activation=activation, blend="constant")(vol[None], model)[0]
    act = (lambda t: torch.softmax(t, 0)) if activation == "softmax" else torch.sigmoid
    want = sum(act(t) for t in per_axis) / 3
    torch.testing.assert_close(act(both), want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(per_axis[0], per_axis[2])  # the directions do differ


def test_roi_and_axis_arguments():
    assert parse_slice_axis("Axial") == 2 and parse_slice_axis("sagittal") == 0 and parse_slice_axis(1) == 1
    assert parse_slice_axis("all") == "all"
    with pytest.raises(ValueError, match="slice axis must be"):
        parse_slice_axis("transverse")
    assert slice_inferer([16, 16, 1], "axial").roi_size == [16, 16]  # `attnseg predict --roi 16 16 1`
    assert slice_inferer([16, 1, 12], "coronal").roi_size == [16, 12]
    inf = slice_inferer(16, "axial", slice_batch=8, mirror_axes=(0, 1))
    assert (inf.roi_size, inf.sw_batch_size, inf.mirror_axes) == (16, 8, (0, 1))  # read by predict's messages
    with pytest.raises(ValueError, match="in-plane values"):
        slice_inferer([16, 16, 8], "axial")
    with pytest.raises(ValueError, match="needs 3-D volumes"):
        SliceInferer(SlidingWindowInferer([8, 8]), 2, context=1)(torch.zeros(1, 3, 8, 8), _model(3))
