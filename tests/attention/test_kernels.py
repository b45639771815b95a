"""The compiled (numba) training path of the pooled-scale modules against the PyTorch path.

float32 results of the compiled kernels are compared with the same module run in float64,
which takes the PyTorch ops (themselves checked against plain autograd in test_slice.py /
test_se_pe.py). Spies make sure the compiled kernels really ran.
"""

import copy

import pytest
import torch

from attnseg.attention import _kernels, create_attention

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed or ATTNSEG_NUMBA=0")


@pytest.fixture
def calls(monkeypatch):
    """Count calls of the compiled entry points (the wrapped functions still run)."""
    counts = {}
    for name in ("slice_dot", "scale_add", "pam_fixed_forward", "pam_fixed_backward"):
        fn = getattr(_kernels, name)

        def wrapped(*args, _fn=fn, _name=name, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(_kernels, name, wrapped)
    return counts


def _grads(m, x, g, input_grad=True):
    x = x.detach().requires_grad_(input_grad)
    y = m(x)
    wrt = ([x] if input_grad else []) + list(m.parameters())
    return [y] + list(torch.autograd.grad(y, wrt, g))


CASES = [
    ("pam", 3, (9, 5, 4), {"slice_reduction": 2}),
    ("pam", 3, (5, 6, 7), {"slice_axis": 2, "slice_reduction": 3}),
    ("pam", 2, (12, 7), {"slice_axis": 1, "slice_reduction": 4, "channel_reduction": 2}),
    ("slice", 3, (6, 5, 3), {"reduction": 2, "slice_axis": 1}),
    ("cse", 3, (5, 4, 3), {}),
    ("ksca", 2, (7, 6), {}),
    ("pam-adaptive", 3, (7, 4, 5), {}),
    ("pam-adaptive", 2, (9, 6), {"slice_axis": 1, "kernel_size": 3, "hidden": 2}),
]


@pytest.mark.parametrize("name,dims,size,kw", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_path_matches_float64(name, dims, size, kw, batch, calls):
    torch.manual_seed(0)
    if name in ("pam", "slice"):
        kw = {**kw, "spatial_size": size}
    m = create_attention(name, 8, dims, **kw)
    x = torch.randn(batch, 8, *size)
    g = torch.randn_like(x)
    got = _grads(m, x, g)
    assert calls["slice_dot"] == 1 and calls["scale_add"] == 1
    if name == "pam":  # the fixed form's tiny network is compiled too
        assert calls["pam_fixed_forward"] == 1 and calls["pam_fixed_backward"] == 1
    want = _grads(copy.deepcopy(m).double(), x.double(), g.double())
    assert calls["slice_dot"] == 1  # float64 takes the PyTorch ops
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-5)


def test_parameter_gradients_without_input_gradient(calls):
    torch.manual_seed(1)
    m = create_attention("pam", 4, 3, spatial_size=(8, 3, 3), slice_reduction=2)
    x, g = torch.randn(2, 4, 8, 3, 3), torch.randn(2, 4, 8, 3, 3)
    got = _grads(m, x, g, input_grad=False)
    assert calls["slice_dot"] == 1 and "scale_add" not in calls  # no input gradient to form
    want = _grads(copy.deepcopy(m).double(), x.double(), g.double(), input_grad=False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-5)


def test_fallbacks(calls, monkeypatch):
    m = create_attention("pam", 4, 3, spatial_size=(8, 4, 4), slice_reduction=2)
    x = torch.randn(1, 4, 8, 4, 4)
    # channels-last input: not contiguous in the full-size kernels' layout (the tiny network's
    # pooled descriptors are, so it stays compiled)
    _grads(m, x.contiguous(memory_format=torch.channels_last_3d), torch.randn_like(x))
    assert "slice_dot" not in calls and "scale_add" not in calls and calls["pam_fixed_forward"] == 1
    calls.clear()
    monkeypatch.setenv("ATTNSEG_NUMBA", "0")
    assert not _kernels.available()
    _grads(m, x, torch.randn_like(x))
    assert not calls
    monkeypatch.delenv("ATTNSEG_NUMBA")
    _grads(m, x, torch.randn_like(x))
    assert calls["slice_dot"] == 1


def test_eval_forward_does_not_use_the_kernels(calls):
    m = create_attention("pam", 4, 2, spatial_size=(8, 5), slice_reduction=2).eval()
    with torch.no_grad():
        m(torch.randn(2, 4, 8, 5))
    assert not calls


# ----------------------------------------------------------------------------------------
# trilinear sampling (stn in 3D)


@pytest.mark.parametrize("batch,size,out_size", [(1, (9, 8, 7), (9, 8, 7)), (2, (5, 11, 6), (7, 4, 9))])
def test_trilinear_matches_grid_sample(batch, size, out_size):
    from torch.nn import functional as F

    from attnseg.attention.stn import affine_grid, grid_sample_3d

    torch.manual_seed(2)
    x = torch.randn(batch, 5, *size, requires_grad=True)
    # rotations/shears/scalings large enough that many points fall outside (zero padding)
    theta = torch.eye(3, 4) + 0.4 * torch.randn(batch, 3, 4)
    grid = affine_grid(theta, list(out_size))
    grid[0, 0, 0, 0] = torch.tensor([-1.0 + 1 / size[2], 1.0, 0.3])  # on a voxel centre / on the border
    grid = grid.detach().requires_grad_()
    g = torch.randn(batch, 5, *out_size)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = grid_sample_3d(x, grid)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(got, (x, grid), g), torch.autograd.grad(want, (x, grid), g, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the input gradient alone (grid without gradient) and the grid gradient alone
    gx = torch.autograd.grad(grid_sample_3d(x, grid.detach()), x, g)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(want, x, g, retain_graph=True)[0], rtol=1e-4, atol=1e-4)
    gg = torch.autograd.grad(grid_sample_3d(x.detach(), grid), grid, g)[0]
    torch.testing.assert_close(gg, torch.autograd.grad(want, grid, g)[0], rtol=1e-4, atol=1e-4)


def test_stn_3d_uses_the_compiled_sampler(monkeypatch):
    from attnseg.attention import stn as stn_mod

    n = {"fwd": 0, "bwd": 0}
    for key, name in (("fwd", "trilinear_forward"), ("bwd", "trilinear_backward")):
        fn = getattr(_kernels, name)

        def wrapped(*a, _fn=fn, _key=key):
            n[_key] += 1
            return _fn(*a)

        monkeypatch.setattr(_kernels, name, wrapped)
    m = create_attention("stn", 3, 3)
    with torch.no_grad():  # a non-identity transform
        m.fc2.bias.add_(0.1 * torch.randn(12))
    x = torch.randn(2, 3, 6, 5, 4, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert n == {"fwd": 1, "bwd": 1}
    assert all(p.grad is not None for p in m.parameters())
    monkeypatch.setenv("ATTNSEG_NUMBA", "0")
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-5)
    assert n["fwd"] == 1
    assert stn_mod.grid_sample_3d is not None


# ----------------------------------------------------------------------------------------
# spatial SE / scSE


@pytest.mark.parametrize("name,kw,dims", [("sse", {}, 3), ("sse", {}, 2), ("scse", {}, 3), ("scse", {}, 2),
                                          ("scse", {"combine": "max"}, 3), ("scse", {"combine": "max"}, 2)])
@pytest.mark.parametrize("batch", [1, 2])
def test_scse_compiled_matches_float64(name, kw, dims, batch, monkeypatch):
    used = []
    fn = _kernels.scse_grad_input
    monkeypatch.setattr(_kernels, "scse_grad_input", lambda *a: used.append(1) or fn(*a))
    torch.manual_seed(9)
    m = create_attention(name, 6, dims, **kw)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(batch, 6, *(7, 5, 3)[:dims])
    g = torch.randn_like(x)
    got = _grads(m, x, g)
    assert used == [1]
    want = _grads(copy.deepcopy(m).double(), x.double(), g.double())
    assert used == [1]  # float64 takes the PyTorch ops (checked against plain autograd in test_se_pe.py)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kw", [("sse", {}), ("scse", {}), ("scse", {"combine": "max"})])
def test_scse_compiled_inference_matches_pytorch(name, kw, monkeypatch):
    used = []
    fn = _kernels.scse_combine
    monkeypatch.setattr(_kernels, "scse_combine", lambda *a: used.append(1) or fn(*a))
    torch.manual_seed(10)
    m = create_attention(name, 5, 3, **kw).eval()
    x = torch.randn(2, 5, 6, 7, 4)
    with torch.no_grad():
        got = m(x)
        assert used == [1]
        monkeypatch.setenv("ATTNSEG_NUMBA", "0")
        want = m(x)
    assert used == [1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,size,out_size", [(1, (9, 8), (9, 8)), (2, (5, 11), (7, 4))])
def test_bilinear_backward_matches_grid_sample(batch, size, out_size, monkeypatch):
    from torch.nn import functional as F

    from attnseg.attention.stn import affine_grid, grid_sample_2d

    used = []
    fn = _kernels.bilinear_backward
    monkeypatch.setattr(_kernels, "bilinear_backward", lambda *a: used.append(1) or fn(*a))
    torch.manual_seed(3)
    x = torch.randn(batch, 4, *size, requires_grad=True)
    grid = affine_grid(torch.eye(2, 3) + 0.4 * torch.randn(batch, 2, 3), list(out_size))
    grid[0, 0, 0] = torch.tensor([-1.0 + 1 / size[1], 1.0])  # on a pixel centre / on the border
    grid = grid.detach().requires_grad_()
    g = torch.randn(batch, 4, *out_size)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = grid_sample_2d(x, grid)
    torch.testing.assert_close(got, want)
    wants = torch.autograd.grad(want, (x, grid), g, retain_graph=True)
    for a, b in zip(torch.autograd.grad(got, (x, grid), g), wants):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(grid_sample_2d(x, grid.detach()), x, g)[0], wants[0],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(grid_sample_2d(x.detach(), grid), grid, g)[0], wants[1],
                               rtol=1e-4, atol=1e-4)
    assert used == [1, 1, 1]


# ----------------------------------------------------------------------------------------
# CBAM


@pytest.mark.parametrize("dims,size", [(2, (9, 7)), (3, (5, 6, 4))])
@pytest.mark.parametrize("batch", [1, 2])
def test_cbam_compiled_matches_float64(dims, size, batch, monkeypatch):
    used = []
    fn = _kernels.cbam_backward
    monkeypatch.setattr(_kernels, "cbam_backward", lambda *a: used.append(1) or fn(*a))
    torch.manual_seed(11)
    m = create_attention("cbam", 6, dims, reduction=2, kernel_size=3)
    x = torch.randn(batch, 6, *size)
    g = torch.randn_like(x)
    got = _grads(m, x, g)
    assert used == [1]
    want = _grads(copy.deepcopy(m).double(), x.double(), g.double())
    assert used == [1]  # float64: the PyTorch ops
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-5)


def test_cbam_compiled_frozen_parameters_and_no_input_gradient():
    torch.manual_seed(12)
    m = create_attention("cbam", 4, 2, kernel_size=3)
    m.spatial.weight.requires_grad_(False)
    x, g = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    y = m(x)  # x needs no gradient: only the parameters that require one get it
    y.backward(g)
    assert m.spatial.weight.grad is None and m.spatial.bias.grad is not None
    ref = copy.deepcopy(m).double()
    ref.zero_grad()
    ref(x.double()).backward(g.double())
    for p, q in zip(m.parameters(), ref.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad.float(), rtol=1e-4, atol=1e-5)
