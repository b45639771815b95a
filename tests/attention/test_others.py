"""Value tests for cbam, ag, stn, splat, dual and anatomynet against direct formulas."""

import pytest
import torch
from torch.nn import functional as F

from attnseg.attention import create_attention


def test_cbam_spatial_sigmoid_is_on_the_conv_output():
    torch.manual_seed(0)
    m = create_attention("cbam", 8, 2, reduction=2, kernel_size=3)
    x = torch.randn(2, 8, 7, 9)
    xc = m.channel(x)
    ref = xc * torch.sigmoid(m.spatial(torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)))
    torch.testing.assert_close(m(x), ref)


@pytest.mark.parametrize("gsize", [(4, 5, 3), (3, 3, 2), (7, 9, 5)])
def test_ag_formula_for_any_gate_size(gsize):
    torch.manual_seed(1)
    m = create_attention("ag", 6, 3, gate_channels=10)
    x, g = torch.randn(2, 6, 7, 9, 5), torch.randn(2, 10, *gsize)
    th = m.theta(x)
    ph = F.interpolate(m.phi(g), size=th.shape[2:], mode="trilinear", align_corners=False)
    psi = torch.sigmoid(m.psi(F.relu(th + ph)))
    psi = F.interpolate(psi, size=x.shape[2:], mode="trilinear", align_corners=False)
    torch.testing.assert_close(m.attention_map(x, g), psi)
    torch.testing.assert_close(m(x, g), m.out(psi * x))


@pytest.mark.parametrize("dims", [2, 3])
def test_stn_starts_as_identity_and_translates(dims):
    torch.manual_seed(2)
    m = create_attention("stn", 4, dims)
    x = torch.randn(2, 4, *(6, 8, 5)[:dims])
    torch.testing.assert_close(m(x), x, atol=1e-5, rtol=1e-5)
    # shift the sampling grid by one voxel along the last axis (x = W): out[..., i] = in[..., i+1]
    n = dims
    with torch.no_grad():
        theta = torch.eye(n, n + 1)
        theta[0, n] = 2.0 / x.shape[-1]
        m.fc2.bias.copy_(theta.flatten())
    y = m(x)
    torch.testing.assert_close(y[..., :-1], x[..., 1:], atol=1e-5, rtol=1e-5)
    assert y[..., -1].abs().max() < 1e-5  # sampled outside → zero padding


def test_splat_weights_sum_to_one_and_output_formula():
    torch.manual_seed(3)
    m = create_attention("splat", 8, 2, radix=2, cardinality=2, norm=None)
    x = torch.randn(2, 8, 5, 7)
    y = m.conv(x)
    splits = y.view(2, 2, 8, 5, 7)
    w = m.split_weights(splits.sum(1).mean((2, 3)))
    torch.testing.assert_close(w.sum(1), torch.ones(2, 8))
    torch.testing.assert_close(m(x), (splits * w[..., None, None]).sum(1))


@pytest.mark.parametrize("max_tokens,pool_queries", [(None, True), (12, False), (12, True)])
def test_dual_position_and_channel_formulas(max_tokens, pool_queries):
    torch.manual_seed(4)
    m = create_attention("dual", 8, 3, reduction=4, max_tokens=max_tokens, pool_queries=pool_queries)
    with torch.no_grad():
        m.position.gamma.fill_(0.7)
        m.channel.gamma.fill_(-0.3)
    x = torch.randn(2, 8, 3, 4, 5)
    kv = x if max_tokens is None else F.avg_pool3d(x, 2, 2, ceil_mode=True)  # 60 → 2·2·3 = 12 tokens
    qx = kv if pool_queries else x
    q = m.position.query(qx).flatten(2)
    k, v = m.position.key(kv).flatten(2), m.position.value(kv).flatten(2)
    attn = torch.softmax(q.transpose(1, 2) @ k, -1)  # (B, Nq, M)
    pos = (v @ attn.transpose(1, 2)).view(*qx.shape)
    if pos.shape != x.shape:  # pooled queries: the attention output is interpolated back
        pos = F.interpolate(pos, size=x.shape[2:], mode="trilinear", align_corners=False)
    pos = x + 0.7 * pos
    f = x.flatten(2)
    e = f @ f.transpose(1, 2)
    ch = x + -0.3 * (torch.softmax(e.amax(-1, keepdim=True) - e, -1) @ f).view_as(x)
    torch.testing.assert_close(m(x), pos + ch - x, atol=1e-5, rtol=1e-5)


def test_anatomynet_residual_formula():
    torch.manual_seed(5)
    m = create_attention("anatomynet", 4, 2).eval()
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(m(x), torch.relu(x + m.se(m.conv2(m.conv1(x)))))


@pytest.mark.parametrize("size,p", [((3, 4, 5), 2), ((7, 13, 6), 3), ((2, 9), 4), ((128, 37), 6), ((5, 5, 5), 7)])
def test_dual_separable_pool_and_interpolation_equal_pytorch(size, p):
    from attnseg.attention.dual import _linear_matrix, _pool_matrix, _separable

    torch.manual_seed(5)
    x = torch.randn(2, 3, *size, dtype=torch.double, requires_grad=True)
    pool = F.avg_pool3d if len(size) == 3 else F.avg_pool2d
    pooled = _separable(x, [_pool_matrix(s, p) for s in size])
    # PyTorch's avg_pool refuses a kernel larger than the input: such an axis is one window
    want = pool(x, [min(p, s) for s in size], p, ceil_mode=True)
    torch.testing.assert_close(pooled, want)
    up = _separable(pooled, [_linear_matrix(a, b) for a, b in zip(pooled.shape[2:], size)])
    mode = "trilinear" if len(size) == 3 else "bilinear"
    torch.testing.assert_close(up, F.interpolate(want, size=size, mode=mode, align_corners=False))
    g = torch.randn_like(up)
    torch.testing.assert_close(torch.autograd.grad(up, x, g)[0],
                               torch.autograd.grad(F.interpolate(want, size=size, mode=mode, align_corners=False),
                                                   x, g)[0])
