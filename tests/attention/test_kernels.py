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
