import pytest
import torch
from torch import nn

from attnseg import blocks
from attnseg.attention.plugin import AttentionPlugin
from attnseg.blocks import BottleneckUnit, ConvNormAct, ResidualUnit, Upsample


@pytest.mark.parametrize("dims", [2, 3])
def test_factories_pick_layer_by_dims(dims):
    assert type(blocks.conv(dims, 2, 4)).__name__ == f"Conv{dims}d"
    assert type(blocks.conv_transpose(dims, 2, 4)).__name__ == f"ConvTranspose{dims}d"
    assert type(blocks.norm("batch", dims, 4)).__name__ == f"BatchNorm{dims}d"
    inorm = blocks.norm("instance", dims, 4)
    assert type(inorm).__name__ == f"InstanceNorm{dims}d" and not inorm.affine
    assert blocks.norm(("instance", {"affine": True}), dims, 4).affine
    assert blocks.norm(("group", {"num_groups": 8}), dims, 4).num_groups == 4  # clamped
    assert type(blocks.pool("max", dims)).__name__ == f"MaxPool{dims}d"
    assert blocks.act("prelu").weight.numel() == 1
    assert blocks.act("prelu_channel", 7).weight.numel() == 7
    assert isinstance(blocks.norm(None, dims, 4), nn.Identity)


def test_bad_names_raise():
    with pytest.raises(ValueError, match="spatial_dims"):
        blocks.conv(4, 1, 1)
    with pytest.raises(ValueError, match="unknown norm"):
        blocks.norm("foo", 3, 1)
    with pytest.raises(ValueError, match="unknown activation"):
        blocks.act("foo")
    with pytest.raises(ValueError, match="order"):
        ConvNormAct(3, 1, 1, order="nx")


@pytest.mark.parametrize("order,names", [("cna", ["conv", "norm", "act"]), ("can", ["conv", "act", "norm"]),
                                         ("nac", ["norm", "act", "conv"])])
def test_conv_norm_act_order_and_bias(order, names):
    u = ConvNormAct(3, 2, 6, 3, norm=("instance", {"affine": True}), act="prelu_channel", order=order)
    assert [n for n, _ in u.named_children()] == names
    # bias only when the norm does not follow the conv
    assert (u.conv.bias is None) == (order.index("n") > order.index("c"))
    # pre-activation norm normalises the input channels
    assert u.norm.num_features == (2 if order == "nac" else 6)
    assert u.act.weight.numel() == (2 if order == "nac" else 6)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("unit", [ResidualUnit, BottleneckUnit])
def test_residual_units_shapes_and_shortcut(dims, unit):
    x = torch.randn(2, 4, *([8] * dims))
    m = unit(dims, 4, 8, stride=2, norm="batch")
    assert m(x).shape == (2, 8, *([4] * dims))
    assert not isinstance(m.shortcut, nn.Identity)
    same = unit(dims, 8, 8, stride=1)
    assert isinstance(same.shortcut, nn.Identity)
    y = torch.randn(1, 8, *([5] * dims))
    assert same(y).shape == y.shape


def test_residual_unit_is_sum_of_paths():
    torch.manual_seed(0)
    m = ResidualUnit(3, 3, 3, norm=None, act="relu").eval()
    x = torch.randn(1, 3, 5, 5, 5)
    expected = torch.relu(m.conv_b(m.conv_a(x)) + x)
    torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["interp", "deconv"])
def test_upsample(dims, mode):
    x = torch.randn(1, 4, *([3] * dims))
    up = Upsample(dims, 4, 2, scale_factor=2, mode=mode)
    assert up(x).shape == (1, 2, *([6] * dims))
    assert up(x, size=[7] * dims).shape == (1, 2, *([7] * dims))
    up3 = Upsample(dims, 4, 4, scale_factor=2, mode="deconv", kernel_size=3)
    assert up3(x).shape == (1, 4, *([6] * dims))


def test_divisibility_helpers():
    blocks.check_divisible((32, 48), 16)
    with pytest.raises(ValueError, match="axis 1 has size 50"):
        blocks.check_divisible((32, 50), 16, "m")
    x = torch.randn(1, 1, 5, 17)
    y, crop = blocks.pad_to_multiple(x, 8)
    assert y.shape == (1, 1, 8, 24)
    torch.testing.assert_close(y[crop], x)


@pytest.mark.parametrize("dims", [2, 3])
def test_attention_plugin_sites(dims):
    plug = AttentionPlugin("cse", {"reduction": 2}, attention_at=("encoder",))
    site = plug.build("encoder", 8, dims)
    assert sum(p.numel() for p in site.parameters()) == 8 * 4 + 4 + 4 * 8 + 8
    x = torch.randn(2, 8, *([5] * dims))
    assert site(x).shape == x.shape
    off = plug.build("decoder", 8, dims)
    assert off(x) is x and not list(off.parameters())
    with pytest.raises(ValueError, match="unknown sites"):
        AttentionPlugin("cse", attention_at=("middle",))
    with pytest.raises(KeyError, match="Unknown attention"):
        AttentionPlugin("no-such-attention")


def test_attention_plugin_chains_modules_in_order():
    plug = AttentionPlugin(["cse", "cse"], [{"reduction": 2}, {"reduction": 4}], attention_at="decoder")
    site = plug.build("decoder", 8, 3)
    assert isinstance(site.attn, nn.Sequential) and len(site.attn) == 2
    assert site.attn[0].fc1.out_features == 4 and site.attn[1].fc1.out_features == 2
    x = torch.randn(1, 8, 3, 4, 5)
    torch.testing.assert_close(site(x), site.attn[1](site.attn[0](x)))
    with pytest.raises(ValueError, match="2 modules"):
        AttentionPlugin(["cse", "cse"], [{}])
