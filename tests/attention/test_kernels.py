"""The compiled (numba) kernel that remains (2D stn's grid_sample backward) against PyTorch,
reached through the speed-up layer's hook ``attnseg.attention._accel.grid_sample``.

(The pooled-scale, PAM, scSE, CBAM and 3D trilinear kernels were removed: a whole training step was not >= 10 %
faster with them, benchmarks/whole_step.py and docs/benchmarks.md.)
"""


import pytest
import torch
from torch.nn import functional as F

from attnseg.attention import _accel
from attnseg.attention._accel import kernels
from attnseg.attention.stn import affine_grid

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba is not installed or ATTNSEG_NUMBA=0")


def _spy(monkeypatch) -> list[int]:
    used: list[int] = []
    fn = kernels.bilinear_backward
    monkeypatch.setattr(kernels, "bilinear_backward", lambda *a: used.append(1) or fn(*a))
    return used


def _case(batch, size, out_size):
    torch.manual_seed(3)
    x = torch.randn(batch, 4, *size, requires_grad=True)
    grid = affine_grid(torch.eye(2, 3) + 0.4 * torch.randn(batch, 2, 3), list(out_size))
    grid[0, 0, 0] = torch.tensor([-1.0 + 1 / size[1], 1.0])  # on a pixel centre / on the border
    return x, grid.detach().requires_grad_(), torch.randn(batch, 4, *out_size)


@needs_numba
@pytest.mark.parametrize("batch,size,out_size", [(1, (9, 8), (9, 8)), (2, (5, 11), (7, 4))])
def test_bilinear_backward_matches_grid_sample(batch, size, out_size, monkeypatch):
    used = _spy(monkeypatch)
    x, grid, g = _case(batch, size, out_size)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = _accel.grid_sample(x, grid)
    torch.testing.assert_close(got, want)
    wants = torch.autograd.grad(want, (x, grid), g, retain_graph=True)
    for a, b in zip(torch.autograd.grad(got, (x, grid), g), wants):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(_accel.grid_sample(x, grid.detach()), x, g)[0], wants[0],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(_accel.grid_sample(x.detach(), grid), grid, g)[0], wants[1],
                               rtol=1e-4, atol=1e-4)
    assert used == [1, 1, 1]


def test_numba_switched_off_gives_pytorch_backward(monkeypatch):
    # ATTNSEG_NUMBA=0 is read at call time: no kernel call, PyTorch's own values exactly
    monkeypatch.setenv("ATTNSEG_NUMBA", "0")
    used = _spy(monkeypatch)
    x, grid, g = _case(2, (5, 11), (7, 4))
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = _accel.grid_sample(x, grid)
    assert not _accel.numba_available()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(got, (x, grid), g), torch.autograd.grad(want, (x, grid), g)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert used == []


@needs_numba
def test_stn_module_uses_the_kernel_in_2d_training_only(monkeypatch):
    from attnseg.attention import create_attention

    used = _spy(monkeypatch)
    torch.manual_seed(4)
    m = create_attention("stn", 3, 2)
    torch.nn.init.normal_(m.fc2.weight, std=0.1)  # not the identity: points between pixels
    x = torch.randn(2, 3, 12, 10, requires_grad=True)
    y = m(x)
    y.square().sum().backward()
    assert used == [1]
    got = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad(set_to_none=True)
    monkeypatch.setenv("ATTNSEG_NUMBA", "0")
    y0 = m(x)
    torch.testing.assert_close(y, y0)
    y0.square().sum().backward()
    for a, b in zip(got, [x.grad] + [p.grad for p in m.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert used == [1]
    with torch.no_grad():
        m(x)
    create_attention("stn", 3, 3)(torch.randn(1, 3, 8, 8, 8, requires_grad=True)).sum().backward()
    assert used == [1]
