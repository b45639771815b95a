"""The compiled (numba) kernel that remains (2D stn's grid_sample backward) against PyTorch.

(The pooled-scale, PAM, scSE, CBAM and 3D trilinear kernels were removed: a whole training step was not >= 10 %
faster with them, benchmarks/whole_step.py and docs/benchmarks.md.)
"""


import pytest
import torch

from attnseg.attention import _kernels

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed or ATTNSEG_NUMBA=0")


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
