"""PANet family: shapes, output conventions, exact reference parameter counts, gradients,
export, size handling and the attention plug-in."""

import pytest
import torch

from attnseg.attention import ATTENTION
from attnseg.models import MODELS, count_parameters, create_model, list_models
from attnseg.models.panet import PANetCascade, PANetUNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


TINY = dict(features=(4, 8, 8, 16, 16))
FAMILY = ["unet-res", "attention-unet-res", "enhanced-unet", "cascaded-unet", "prior-attention-net", "panet-brats"]
# training-mode outputs at the default deep supervision: "out" and the ``aux_outputs`` tag
KEYS = {name: {"out", *MODELS.get(name).tags["aux_outputs"]} for name in FAMILY}


def _input(dims: int, batch: int = 1, size: int | None = None) -> torch.Tensor:
    size = size or (16 if dims == 3 else 32)
    return torch.randn(batch, 4, *([size] * dims))


def _tiny(name: str, dims: int, **kw) -> torch.nn.Module:
    # 3D inputs of 16³ with a stride-1 bottleneck (strides right-padded with 1) keep >1 voxel
    # at every level, which instance norm needs in training mode
    strides = (1, 2, 2, 2) if dims == 3 else (1, 2, 2, 2, 2)
    torch.manual_seed(0)
    return create_model(name, spatial_dims=dims, strides=strides, **{**TINY, **kw})


def test_family_is_registered_with_alias():
    names = set(list_models())
    assert set(FAMILY) <= names
    assert MODELS.get("panet").name == "prior-attention-net"
    assert all(MODELS.get(n).family == "panet" and MODELS.get(n).dims == (2, 3) for n in FAMILY)


# reference parameter counts (every parameter the reference constructs), BraTS config, 4 outputs
REFERENCE_COUNTS = [
    ("unet-res", {}, 16_901_800, 18),
    ("attention-unet-res", {}, 17_116_188, 30),
    ("enhanced-unet", {}, 16_903_604, 18),
    ("cascaded-unet", {}, 33_803_501, 36),
    ("prior-attention-net", {"head": "fcn"}, 19_231_833, 18),
    ("prior-attention-net", {"head": "parallel"}, 17_391_898, 18),
    ("panet-brats", {}, 19_231_833, 18),
]


@pytest.mark.parametrize("name,kw,count,n_unused", REFERENCE_COUNTS)
def test_reference_parameter_counts_and_clean_layout(name, kw, count, n_unused):
    ref = create_model(name, **kw)
    assert count_parameters(ref) == count
    # the clean layout drops exactly the never-used reference tensors (one PReLU slope each)
    clean = create_model(name, reference_layout=False, head_norm="batch", head_act="prelu", **kw)
    ref_params, clean_params = dict(ref.named_parameters()), dict(clean.named_parameters())
    dropped = set(ref_params) - set(clean_params)
    assert set(clean_params) <= set(ref_params)
    assert len(dropped) == n_unused and all(k.endswith("unused_prelu") for k in dropped)
    assert count_parameters(clean) == count - sum(ref_params[k].numel() for k in dropped) == count - n_unused
    assert {k: v.shape for k, v in clean_params.items()} == {k: ref_params[k].shape for k in clean_params}


def test_brats_preset_is_the_reference_configuration():
    m = create_model("panet-brats")
    assert m.channels == (32, 64, 128, 256, 320) and m.strides == (1, 2, 2, 2, 2)
    assert m.in_channels == 4 and m.num_classes == 4 and m.prior_head_type == "fcn"
    enc = m.encoder[0]
    assert type(enc.conv_a.norm).__name__ == "InstanceNorm3d" and not enc.conv_a.norm.affine
    assert type(enc.conv_a.act).__name__ == "PReLU" and enc.conv_a.act.weight.numel() == 1
    # the prior head keeps the reference's batch norm; decoder upsampling has no parameters
    assert type(m.prior_head.proj4.norm).__name__ == "BatchNorm3d"
    assert not any(k.startswith("up.") for k in m.state_dict())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", FAMILY[:-1])
def test_output_shapes_and_keys(name, dims, batch):
    m = _tiny(name, dims)
    x = _input(dims, batch)
    outs = m.train()(x)
    assert isinstance(outs, dict) and set(outs) == KEYS[name] == set(m.output_keys)
    for k, v in outs.items():
        channels = 1 if k == "stage1" else 4
        assert v.shape == (batch, channels, *x.shape[2:]), k
    m.eval()
    with torch.no_grad():
        y, full, pred = m(x), m.forward_dict(x), m.predict(x)
    assert isinstance(y, torch.Tensor) and torch.equal(y, full["out"]) and torch.equal(y, pred)
    assert set(full) == KEYS[name]


def test_return_dict_override_and_deconv_upsampling():
    m = _tiny("prior-attention-net", 2, use_deconv=True, head="parallel").eval()
    x = _input(2)
    assert isinstance(m(x, return_dict=True), dict)
    assert isinstance(m.train()(x, return_dict=False), torch.Tensor)
    assert sum(k.startswith("up.") for k in m.state_dict()) == 8  # 4 transposed convs (weight + bias)


def _all_outputs_loss(outs: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    # random weights so no symmetry can cancel a gradient
    return sum((v * torch.randn(v.shape, generator=g)).sum() for v in outs.values())


@pytest.mark.parametrize("name", FAMILY[:-1])
def test_gradient_reaches_every_used_parameter(name):
    m = _tiny(name, 3, reference_layout=True).train()
    _all_outputs_loss(m(_input(3, 2))).backward()
    no_grad = {n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    unused = {n for n, _ in m.named_parameters() if "unused" in n}
    assert unused and no_grad == unused  # the never-used reference parameters and nothing else

    clean = _tiny(name, 3, reference_layout=False).train()
    _all_outputs_loss(clean(_input(3, 2))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in clean.parameters())


def test_cascade_mask_doubles_roi_and_stage1_is_hard_gated():
    m = _tiny("cascaded-unet", 2).eval()
    assert isinstance(m, PANetCascade)
    x = _input(2)
    with torch.no_grad():
        outs = m.forward_dict(x)
        mask = (torch.sigmoid(outs["stage1"]) > 0.5).float()
        expected = m.stage2.predict(x * (1 + mask))
    assert torch.equal(outs["out"], expected)


def test_prior_gates_follow_the_formula():
    # with the prior map forced to p = sigmoid(0) = 0.5 everywhere, skip_i = (gamma_i + 0.5) * x_i
    m = _tiny("prior-attention-net", 2).eval()
    with torch.no_grad():
        m.prior_head.out.weight.zero_()
        m.prior_head.out.bias.zero_()
        m.prior_down.weight.zero_()
        m.prior_down.bias.zero_()  # level 3 sees sigmoid-free conv output 0 → (gamma + 0)
        for i, g in enumerate(m.prior_gates):
            g.scale.fill_(0.25 * (i + 1))
    x = _input(2)
    skips = {}
    hooks = [m.decoder[i].register_forward_pre_hook(lambda mod, a, i=i: skips.__setitem__(i, a[0]))
             for i in range(4)]
    with torch.no_grad():
        m(x)
        feats = m.encode(x)
    for h in hooks:
        h.remove()
    for i in range(4):
        factor = 0.25 * (i + 1) + (0.0 if i == 3 else 0.5)
        c = feats[i].shape[1]
        assert torch.allclose(skips[i][:, :c], factor * feats[i], atol=1e-6), i


def test_torch_export_round_trip_of_inference_path():
    m = _tiny("prior-attention-net", 2).eval()
    x = _input(2, 2)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), m(x), atol=1e-6)


@pytest.mark.parametrize("name", ["unet-res", "prior-attention-net"])
def test_indivisible_sizes_raise_or_are_padded(name):
    m = _tiny(name, 2).eval()
    bad = torch.randn(1, 4, 30, 33)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        m(bad)
    padded = _tiny(name, 2, pad_input=True).eval()
    with torch.no_grad():
        assert padded(bad).shape == (1, 4, 30, 33)
        x = _input(2)
        assert torch.equal(padded(x), m(x))  # no padding needed: same as the plain model
    with pytest.raises(ValueError, match="input channels|expected input"):
        m(torch.randn(1, 3, 32, 32))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="prior head"):
        PANetUNet(prior_head="bogus")
    with pytest.raises(ValueError, match="channels"):
        PANetUNet(features=(8, 16, 32))
    with pytest.raises(ValueError, match="spatial_dims"):
        PANetUNet(spatial_dims=4)
    tiny_grid = create_model("prior-attention-net", spatial_dims=2, strides=(1, 2, 2, 2, 1), **TINY).eval()
    with pytest.raises(ValueError, match="too small"):
        tiny_grid(torch.randn(1, 4, 8, 8))  # level-2 grid 2x2 < the 3x3 prior down-sampling kernel


def test_bottleneck_units_when_last_width_exceeds_320():
    m = create_model("unet-res", channels=(8, 16, 32, 64, 336), spatial_dims=2)
    assert m.bottleneck and type(m.encoder[0]).__name__ == "BottleneckUnit"
    assert m.encoder[1].reduce.conv.out_channels == 8 // 4  # middle width from the input width
    assert m(torch.randn(1, 4, 32, 32)).keys() == {"out"}


# ---- attention plug-in ----------------------------------------------------------------------

PLUGIN_ATTENTION = [e.name for e in ATTENTION.entries() if e.tags.get("plugin_test", True) is not False]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("attention", PLUGIN_ATTENTION)
def test_attention_plugin_sites(attention, dims):
    gated = bool(ATTENTION.get(attention).tags.get("gated", False))
    sites = ("skip",) if gated else ("encoder", "bottleneck", "skip", "decoder")
    x = _input(dims, 1)
    kw = dict(attention=attention, attention_at=sites, input_size=tuple(x.shape[2:]))
    m = _tiny("prior-attention-net", dims, **kw).train()
    plain = _tiny("prior-attention-net", dims)
    names = {n.split(".")[0] for n, _ in m.named_parameters()} - {n.split(".")[0] for n, _ in plain.named_parameters()}
    assert count_parameters(m) >= count_parameters(plain)
    assert names <= {"attn_encoder", "attn_bottleneck", "attn_skip", "attn_decoder"}
    outs = m(x)
    assert outs["out"].shape == (1, 4, *x.shape[2:]) and torch.isfinite(outs["out"]).all()
    if count_parameters(m) > count_parameters(plain):
        _all_outputs_loss(outs).backward()
        assert any(p.grad is not None for n, p in m.named_parameters() if n.startswith("attn_"))


def test_model_contract_and_deprecated_names():
    """``spatial_dims, in_channels, out_channels`` first and stored; the first release's names
    (``num_classes``, ``channels``, ``img_size``) build the same model, with a DeprecationWarning."""
    torch.manual_seed(0)
    new = PANetUNet(2, 3, 5, (4, 8, 8, 16, 16), input_size=(32, 32), prior_head="fcn", deep_supervision=True)
    assert (new.spatial_dims, new.in_channels, new.out_channels) == (2, 3, 5) and new.num_classes == 5
    with pytest.warns(DeprecationWarning, match="'num_classes' is deprecated; use 'out_channels'"):
        old = create_model("prior-attention-net", spatial_dims=2, in_channels=3, num_classes=5,
                           channels=(4, 8, 8, 16, 16), img_size=(32, 32))
    assert old.out_channels == 5 and old.features == (4, 8, 8, 16, 16)
    assert {k: tuple(v.shape) for k, v in old.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in new.state_dict().items()}
    cascade = create_model("cascaded-unet", spatial_dims=2, in_channels=2, out_channels=3, features=(4, 8, 8, 16, 16))
    assert (cascade.in_channels, cascade.out_channels, cascade.stage1.out_channels) == (2, 3, 1)
