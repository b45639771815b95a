"""SE family (cse, sse, scse) and Project & Excite: values against direct formulas."""

import pytest
import torch

from attnseg.attention import create_attention


@pytest.mark.parametrize("dims", [2, 3])
def test_pe_equals_full_size_formula_and_reference_count(dims):
    torch.manual_seed(0)
    m = create_attention("pe", 16, dims)
    # reference PEunet3d site: C·C/2 + C/2 (bias) + C/2 (PReLU) + C/2·C + C = C² + 2C
    assert sum(p.numel() for p in m.parameters()) == 16 * 16 + 2 * 16
    x = torch.randn(2, 16, *(5, 6, 7)[:dims])
    axes = range(2, 2 + dims)
    z = sum(x.mean(dim=[a for a in axes if a != keep], keepdim=True) for keep in axes) / dims
    ref = x * torch.sigmoid(m.conv2(m.act(m.conv1(z))))
    torch.testing.assert_close(m(x), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_cse_formula(pooling):
    torch.manual_seed(1)
    m = create_attention("cse", 8, 3, reduction=4, pooling=pooling)
    x = torch.randn(2, 8, 3, 4, 5)
    fc = lambda u: m.fc2(torch.relu(m.fc1(u)))  # noqa: E731
    avg, mx = x.mean((2, 3, 4)), x.amax((2, 3, 4))
    logits = {"avg": fc(avg), "max": fc(mx), "avg+max": fc(avg) + fc(mx)}[pooling]
    torch.testing.assert_close(m(x), x * torch.sigmoid(logits).view(2, 8, 1, 1, 1))


@pytest.mark.parametrize("combine", ["max", "sum", "mul"])
def test_scse_combines_cse_and_sse(combine):
    torch.manual_seed(2)
    m = create_attention("scse", 8, 2, combine=combine)
    x = torch.randn(2, 8, 5, 7)
    a, b = m.cse(x), x * torch.sigmoid(m.sse.conv(x))
    ref = {"max": torch.maximum(a, b), "sum": a + b, "mul": m.sse(a)}[combine]
    torch.testing.assert_close(m(x), ref)
    with pytest.raises(ValueError, match="combine"):
        create_attention("scse", 8, 2, combine="min")


def test_eca_formula_and_kernel_size():
    torch.manual_seed(3)
    m = create_attention("eca", 16, 3)
    assert m.conv.kernel_size == (3,)  # |log2(16)/2 + 1/2| = 2 → next odd 3
    x = torch.randn(2, 16, 3, 4, 5)
    w = torch.sigmoid(m.conv(x.mean((2, 3, 4)).unsqueeze(1))).squeeze(1)
    torch.testing.assert_close(m(x), x * w.view(2, 16, 1, 1, 1))


def _plain_se(m, x):
    """The textbook sSE / scSE with plain autograd (what the module must equal)."""
    sse = m.sse if hasattr(m, "sse") else m
    b = x * torch.sigmoid(sse.conv(x))
    if not hasattr(m, "sse"):
        return b
    a = x * torch.sigmoid(m.cse.mlp(x.flatten(2).mean(-1))).view(*x.shape[:2], *[1] * (x.dim() - 2))
    return b + torch.relu(a - b) if m.combine == "max" else a + b


@pytest.mark.parametrize("name,kw,dims", [("sse", {}, 3), ("sse", {}, 2), ("scse", {"combine": "max"}, 3),
                                          ("scse", {"combine": "max"}, 2), ("scse", {}, 3), ("scse", {}, 2)])
def test_se_backward_equals_plain_autograd(name, kw, dims, module_and_plain_grads):
    torch.manual_seed(7)
    m = create_attention(name, 6, dims, **kw).double()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 6, *(5, 4, 3)[:dims], dtype=torch.double, requires_grad=True)
    got, plain = module_and_plain_grads(m, x, torch.randn_like(x), lambda xx: _plain_se(m, xx))
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b)
    # and the input gradient against finite differences
    assert torch.autograd.gradcheck(lambda xx: m(xx), (x.detach().requires_grad_(),))


def test_cse_backward_equals_plain_autograd(module_and_plain_grads):
    torch.manual_seed(8)
    m = create_attention("cse", 6, 3, reduction=2).double()
    x = torch.randn(2, 6, 5, 4, 3, dtype=torch.double, requires_grad=True)
    got, plain = module_and_plain_grads(
        m, x, torch.randn_like(x), lambda xx: xx * torch.sigmoid(m.mlp(xx.flatten(2).mean(-1))).view(2, 6, 1, 1, 1))
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda xx: m(xx), (x.detach().requires_grad_(),))
