"""Slice attention, key-slice selection, key-slice channel attention and PAM.

The oracle below is written from the description of the reference (seed-models.md §5.2-5.3):
a Python loop over channels and slices, batch 1, one ``nn.Linear`` pair per channel.
"""

import math

import pytest
import torch
from torch import nn

from attnseg.attention import create_attention
from attnseg.attention.slice import (
    KeySliceChannelAttention,
    ProgressiveAttention,
    SliceAttention,
    key_slice_mask,
    load_reference_channel_weights,
    load_reference_slice_weights,
    reference_slice_param_count,
)


def _ref_state(c, d, dh, prefix="s.", seed=0):
    """A reference-layout state dict with random weights: one Linear pair per channel."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(c):
        sd[f"{prefix}Slice_SE_encoder.{i}.fc.0.weight"] = torch.randn(dh, d, generator=g) * 0.5
        sd[f"{prefix}Slice_SE_encoder.{i}.fc.0.bias"] = torch.randn(dh, generator=g) * 0.5
        sd[f"{prefix}Slice_SE_encoder.{i}.fc.2.weight"] = torch.randn(d, dh, generator=g) * 0.5
        sd[f"{prefix}Slice_SE_encoder.{i}.fc.2.bias"] = torch.randn(d, generator=g) * 0.5
    return sd


def _oracle_pam(x, sd, chan, pool="avg", chan_pool="avg", prefix="s."):
    """Loop oracle of the reference PAM for a (1, C, D, H, W) tensor (avg/max slice pooling,
    channel pooling avg or the reference's "max" (= key-slice mean))."""
    _, c, d, h, w = x.shape
    y = x.clone()
    masks = []
    for ci in range(c):
        slab = x[0, ci]
        z = torch.stack([slab[j].mean() if pool == "avg" else slab[j].max() for j in range(d)])
        w1, b1 = sd[f"{prefix}Slice_SE_encoder.{ci}.fc.0.weight"], sd[f"{prefix}Slice_SE_encoder.{ci}.fc.0.bias"]
        w2, b2 = sd[f"{prefix}Slice_SE_encoder.{ci}.fc.2.weight"], sd[f"{prefix}Slice_SE_encoder.{ci}.fc.2.bias"]
        s = torch.sigmoid(w2 @ torch.relu(w1 @ z + b1) + b2)
        for j in range(d):
            y[0, ci, j] = slab[j] * s[j]
        p = torch.softmax(s, 0)
        masks.append(p >= p.mean())
    u = torch.zeros(c)
    for ci in range(c):
        key = [y[0, ci, j] for j in range(d) if masks[ci][j]]
        u[ci] = torch.stack(key).mean()
    t = torch.sigmoid(chan.fc2(torch.relu(chan.fc1(u))))
    return y * t.view(1, c, 1, 1, 1), torch.stack(masks)


@pytest.mark.parametrize("d,h,clamp", [(12, 4, False), (12, 16, False), (12, 16, True), (10, 3, True)])
def test_fixed_slice_param_count_matches_formula(d, h, clamp):
    m = SliceAttention(5, 3, num_slices=d, reduction=h, clamp_reduction=clamp)
    r = min(h, d) if clamp else h
    assert sum(p.numel() for p in m.parameters()) == 5 * (2 * d * (d // r) + d // r + d)
    assert reference_slice_param_count(5, d, h, clamp) == 5 * (2 * d * (d // r) + d // r + d)


def test_reference_site_counts():
    # seed-models.md §5.2: 16 channels at D=144, h=16 → 43,920
    assert sum(p.numel() for p in create_attention("slice", 16, 3, num_slices=144, reduction=16).parameters()) == 43920
    # PAM at the reference defaults (h=16, channel reduction 8): slice part + channel FC 16→2→16
    m = create_attention("pam", 16, 3, spatial_size=(144, 20, 20))
    assert sum(p.numel() for p in m.parameters()) == 43920 + (16 * 2 + 2) + (2 * 16 + 16)


def test_fixed_form_needs_size():
    with pytest.raises(ValueError, match="num_slices"):
        create_attention("slice", 4, 3)
    with pytest.raises(ValueError, match="num_slices"):
        create_attention("pam", 4, 3)
    m = create_attention("slice", 4, 3, num_slices=6)
    with pytest.raises(ValueError, match="built for 6 slices"):
        m(torch.randn(1, 4, 5, 4, 4))
    with pytest.raises(ValueError, match="slice_axis"):
        create_attention("slice-adaptive", 4, 2, slice_axis=2)


@pytest.mark.parametrize("d,h,pool", [(9, 4, "avg"), (9, 4, "max"), (6, 16, "avg"), (8, 2, "avg+max")])
def test_pam_fixed_matches_loop_oracle(d, h, pool):
    torch.manual_seed(0)
    c = 6
    m = ProgressiveAttention(c, 3, num_slices=d, slice_reduction=h, channel_reduction=2, pooling=pool,
                             reference_quirks=True)
    dh = d // h
    sd = _ref_state(c, d, dh)
    load_reference_slice_weights(m, sd, "s.")
    x = torch.randn(1, c, d, 5, 7)
    y, s, mask, t = m.forward_with_masks(x)
    if pool == "avg+max":
        # the oracle covers one pooling at a time; avg+max is checked via the plain weights below
        zavg, zmax = x.mean((3, 4)), x.amax((3, 4))
        logits = m.slice.excite(zavg) + m.slice.excite(zmax)
        torch.testing.assert_close(s, torch.sigmoid(logits))
        return
    ref, ref_masks = _oracle_pam(x, sd, m.channel, pool=pool)
    assert torch.equal(mask[0], ref_masks)
    assert (y - ref).abs().max() < 1e-5
    assert (m(x) - ref).abs().max() < 1e-5  # x · (s ⊗ t) as one multiply
    if dh == 0:  # zero-width hidden layer: slice weights are sigmoid(second bias), input-independent
        torch.testing.assert_close(s[0], torch.sigmoid(m.slice.fc2_bias))


def test_pam_batch_two_equals_two_batch_ones():
    torch.manual_seed(1)
    m = create_attention("pam", 6, 3, spatial_size=(9, 5, 7), slice_reduction=3, channel_reduction=2)
    x = torch.randn(2, 6, 9, 5, 7)
    y = m(x)
    torch.testing.assert_close(y, torch.cat([m(x[:1]), m(x[1:])]), atol=1e-6, rtol=1e-6)
    # and the samples do pick different key slices
    _, _, mask, _ = m.forward_with_masks(x)
    assert not torch.equal(mask[0], mask[1])


def test_key_slice_mask_definition():
    s = torch.tensor([[[0.1, 0.9, 0.5, 0.5]]])
    p = torch.softmax(s, -1)
    assert torch.equal(key_slice_mask(s), p >= 0.25)
    assert key_slice_mask(torch.rand(3, 4, 11)).any(-1).all()  # never empty
    assert create_attention("kss", 4, 3)(s).dtype == torch.bool


def test_ksca_descriptor_is_key_slice_mean_and_carries_no_gradient():
    torch.manual_seed(2)
    m = KeySliceChannelAttention(4, 3, reduction=2)
    x = torch.randn(2, 4, 6, 3, 3, requires_grad=True)
    mask = torch.rand(2, 4, 6) > 0.5
    mask[..., 0] = True
    y = m(x, mask)
    u = torch.stack([torch.stack([x[b, c][mask[b, c]].mean() for c in range(4)]) for b in range(2)])
    t = torch.sigmoid(m.fc2(torch.relu(m.fc1(u))))
    torch.testing.assert_close(y, x * t.view(2, 4, 1, 1, 1))
    # gradient w.r.t. x goes through the multiplication only (descriptor detached)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * t.detach().view(2, 4, 1, 1, 1))


def test_scse_flavour_quirk_max_is_avg():
    torch.manual_seed(3)
    x = torch.randn(1, 3, 8, 4, 4)
    q = SliceAttention(3, 3, num_slices=8, reduction=4, pooling="max", reference_quirks=True)
    a = SliceAttention(3, 3, num_slices=8, reduction=4, pooling="avg")
    a.load_state_dict(q.state_dict())
    torch.testing.assert_close(q(x), a(x))
    real = SliceAttention(3, 3, num_slices=8, reduction=4, pooling="max")
    real.load_state_dict(q.state_dict())
    assert not torch.allclose(real(x), a(x))


@pytest.mark.parametrize("dims,axis", [(3, 0), (3, 1), (3, 2), (2, 0), (2, 1)])
def test_slice_axis_pools_the_other_axes(dims, axis):
    torch.manual_seed(4)
    size = (5, 6, 7)[:dims]
    m = SliceAttention(3, dims, spatial_size=size, slice_axis=axis, reduction=2)
    x = torch.randn(2, 3, *size)
    y, s = m.forward_with_weights(x)
    assert s.shape == (2, 3, size[axis])
    other = tuple(2 + i for i in range(dims) if i != axis)
    torch.testing.assert_close(s, torch.sigmoid(m.excite(x.mean(other))))
    shape = [2, 3] + [size[i] if i == axis else 1 for i in range(dims)]
    torch.testing.assert_close(y, x * s.view(shape))


def _textbook(m, x):
    """Slice attention / PAM by their definitions for ``(B, C, D, H, W)``, avg pooling written as
    ``x.mean`` over ``H, W`` (independent of the speed-up layer's pooling views)."""
    z = x.mean((3, 4))
    if isinstance(m, SliceAttention):
        return x * m.weights(z)[..., None, None]
    s = m.slice.weights(z)
    mask = key_slice_mask(s).to(z.dtype)
    desc = ((z * s).detach() * mask).sum(-1) / mask.sum(-1)  # key-slice mean of x·s, detached
    t = torch.sigmoid(m.channel.fc2(torch.relu(m.channel.fc1(desc))))
    return x * s[..., None, None] * t[..., None, None, None]


@pytest.mark.parametrize("name,extra", [("slice", {}), ("slice", {"reduction": 2}), ("pam", {}),
                                        ("pam", {"slice_reduction": 2}), ("pam-adaptive", {}),
                                        ("slice-adaptive", {})])
def test_output_and_gradients_equal_the_textbook_definition(name, extra, module_and_plain_grads):
    # ("pam", {}) has a zero-width slice FC (8 // 16 = 0: the slice weights are the second bias)
    torch.manual_seed(5)
    kw = {"spatial_size": (8, 5, 3)} if name in ("slice", "pam") else {}
    m = create_attention(name, 4, 3, **kw, **extra).double()
    x = torch.randn(2, 4, 8, 5, 3, dtype=torch.double, requires_grad=True)
    got, want = module_and_plain_grads(m, x, torch.randn_like(x), lambda xx: _textbook(m, xx))
    for a, b in zip(got, want):  # (unused zero-width params: None in plain autograd, zeros here)
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["slice", "pam"])
def test_gradcheck(name):
    torch.manual_seed(6)
    # the reference detaches PAM's channel descriptor, which a finite-difference check cannot see
    kw = {"detach_descriptor": False, "slice_reduction": 2} if name == "pam" else {"reduction": 2}
    m = create_attention(name, 2, 3, spatial_size=(4, 3, 2), **kw).double()
    x = torch.randn(1, 2, 4, 3, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_adaptive_accepts_any_depth():
    m = create_attention("pam-adaptive", 4, 3)
    for d in (3, 8, 17):
        assert m(torch.randn(1, 4, d, 4, 4)).shape == (1, 4, d, 4, 4)


def test_load_reference_weights_errors():
    m = SliceAttention(2, 3, num_slices=6, reduction=3)
    with pytest.raises(KeyError, match="Slice_SE_encoder"):
        load_reference_slice_weights(m, {}, "x.")
    with pytest.raises(ValueError, match="does not match"):
        load_reference_slice_weights(m, _ref_state(2, 6, 3, prefix=""), "")
    lin = {"fc.0.weight": torch.ones(1, 4), "fc.0.bias": torch.ones(1), "fc.2.weight": torch.ones(4, 1),
           "fc.2.bias": torch.zeros(4)}
    k = KeySliceChannelAttention(4, 3, reduction=4)
    load_reference_channel_weights(k, lin)
    assert torch.equal(k.fc1.weight, torch.ones(1, 4)) and torch.equal(k.fc2.bias, torch.zeros(4))
    assert isinstance(k.fc1, nn.Linear) and math.isclose(k.fc1.bias.item(), 1.0)


def _n(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth,ag_total,sc_total", [(144, 1_189_343, 1_189_343), (64, 1_065_663, 1_067_839)])
def test_unet3d_preset_attention_params_match_reference_table(depth, ag_total, sc_total):
    # seed-models.md §0: unet3d has 1,022,259 params; agscSE/scSE add one attention site per
    # encoder/decoder stage (channels, depth divisor): PAM (h=16, ch=8) or slice SE + cSE
    sites = [(16, 1), (32, 2), (64, 4), (128, 8), (64, 4), (32, 2), (16, 1)]
    ag = sum(_n(create_attention("pam", c, 3, num_slices=depth // f)) for c, f in sites)
    sc = sum(_n(create_attention("slice", c, 3, num_slices=depth // f)) + _n(create_attention("cse", c, 3))
             for c, f in sites)
    assert 1_022_259 + ag == ag_total
    assert 1_022_259 + sc == sc_total


@pytest.mark.parametrize("depth,total", [(144, 7_060_215), (64, 6_933_175)])
def test_vnet_preset_attention_params_match_reference_table(depth, total):
    # vnet 6,883,755; agscSEvnet/scSEvnet (slice h=8, channel 4): 8 skip/decoder sites + bottleneck cSE(128)
    sites = [(8, 1), (16, 2), (32, 4), (64, 8), (64, 8), (32, 4), (16, 2), (8, 1)]
    bottleneck = _n(create_attention("cse", 128, 3, reduction=4))
    ag = sum(_n(create_attention("pam", c, 3, num_slices=depth // f, slice_reduction=8, channel_reduction=4))
             for c, f in sites)
    sc = sum(_n(create_attention("slice", c, 3, num_slices=depth // f, reduction=8))
             + _n(create_attention("cse", c, 3, reduction=4)) for c, f in sites)
    assert 6_883_755 + ag + bottleneck == total
    assert 6_883_755 + sc + bottleneck == total
