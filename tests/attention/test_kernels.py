"""The compiled (numba) kernels that remain (stn's samplers) against float64 / PyTorch.

(The pooled-scale, PAM, scSE and CBAM kernels were removed: a whole training step was not >= 10 %
faster with them, benchmarks/whole_step.py and docs/benchmarks.md.)
"""


import pytest
import torch

from attnseg.attention import _kernels, create_attention

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed or ATTNSEG_NUMBA=0")


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
