"""AMIS reference presets: exact reference parameter counts, construction from the generic
backbones, and the ``amis-reference`` converter checked against fake reference state dicts
built from a key-name table (written here from the reference's layout, not from our code) and
against a functional re-statement of the reference forward pass."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from attnseg.models import count_parameters, create_model, list_models
from attnseg.models.amis_convert import convert_amis_state_dict, infer_amis_preset
from attnseg.models.unet import UNet
from attnseg.models.vnet import VNet

# seed-models.md §0: trainable parameters of the reference implementation at its defaults
REFERENCE_COUNTS = {
    "unet3d": 1_022_259, "PEunet3d": 1_044_499, "cSEunet3d": 1_029_439, "scSEunet3d": 1_189_343,
    "csSEunet3d": 1_189_343, "agscSEunet3d": 1_189_343, "vnet-ref": 6_883_755, "cSEvnet": 6_890_985,
    "csSEvnet": 7_060_215, "scSEvnet": 7_060_215, "agscSEvnet": 7_060_215,
}


@pytest.mark.parametrize("name", list(REFERENCE_COUNTS))
def test_reference_parameter_counts(name):
    model = create_model(name)
    assert count_parameters(model) == REFERENCE_COUNTS[name]
    assert isinstance(model, VNet if "vnet" in name else UNet)  # presets of the generic backbones


def test_slice_presets_count_depends_on_depth():
    # seed-models.md §0: the slice variants at depth 64
    assert count_parameters(create_model("scSEunet3d", depth=64)) == 1_067_839
    assert count_parameters(create_model("agscSEunet3d", depth=64)) == 1_065_663
    assert count_parameters(create_model("csSEvnet", depth=64)) == 6_933_175


def test_presets_registered_and_take_any_batch():
    assert set(REFERENCE_COUNTS) <= set(list_models())
    m = create_model("scSEunet3d", depth=16, init_features=4).eval()  # instance norm: 2+ voxels at 1/8
    y = m(torch.randn(2, 1, 16, 12, 10))
    assert y.shape == (2, 11, 16, 12, 10)
    soft = create_model("unet3d", init_features=4, eval_activation="softmax").eval()
    assert torch.allclose(soft(torch.randn(1, 1, 16, 8, 8)).sum(1), torch.ones(1, 16, 8, 8), atol=1e-5)


# ------------------------------------------------------------------ reference key table
def _cpi(table, prefix, cin, cout, k):
    table[f"{prefix}.conv.weight"] = (cout, cin, k, k, k)
    table[f"{prefix}.conv.bias"] = (cout,)
    table[f"{prefix}.pReLU.weight"] = (cout,)
    table[f"{prefix}.instancenorm.weight"] = (cout,)
    table[f"{prefix}.instancenorm.bias"] = (cout,)


def _fc(table, prefix, n, r):
    h = n // r
    table.update({f"{prefix}.fc.0.weight": (h, n), f"{prefix}.fc.0.bias": (h,), f"{prefix}.fc.2.weight": (n, h),
                  f"{prefix}.fc.2.bias": (n,)})


def _att(table, prefix, names, kinds, c, depth, sh, ch, clamp=True):
    for kind in kinds:
        if kind == "cse":
            _fc(table, f"{prefix}{names['cse']}", c, min(ch, c))
        elif kind == "sse":
            for i in range(c):
                _fc(table, f"{prefix}{names['sse']}.Slice_SE_encoder.{i}", depth, min(sh, depth) if clamp else sh)
        elif kind == "pe":
            p = f"{prefix}pe_layer"
            table.update({f"{p}.relu.weight": (c // ch,), f"{p}.conv_c.weight": (c // ch, c, 1, 1, 1),
                          f"{p}.conv_c.bias": (c // ch,), f"{p}.conv_cT.weight": (c, c // ch, 1, 1, 1),
                          f"{p}.conv_cT.bias": (c,)})


UNET_KINDS = {"unet3d": (), "cSEunet3d": ("cse",), "scSEunet3d": ("sse", "cse"), "csSEunet3d": ("cse", "sse"),
              "PEunet3d": ("pe",), "agscSEunet3d": ("sse", "cse")}
VNET_KINDS = {"vnet-ref": (), "cSEvnet": ("cse",), "scSEvnet": ("sse", "cse"), "csSEvnet": ("cse", "sse"),
              "agscSEvnet": ("sse", "cse")}


def unet_table(preset, init=4, levels=4, cin=1, cout=3, depth=16, sh=16, ch=8):
    ch = 2 if preset == "PEunet3d" else ch
    kinds, f, t = UNET_KINDS[preset], [init * 2 ** k for k in range(levels)], {}
    clamp = preset != "agscSEunet3d"
    for i in range(levels):
        ci = cin if i == 0 else f[i - 1]
        mid = max(f[i] // 2, ci)
        _cpi(t, f"EncoderLayer{i + 1}.basic_module.Conv1", ci, mid, 3)
        _cpi(t, f"EncoderLayer{i + 1}.basic_module.Conv2", mid, f[i], 3)
        _att(t, f"EncoderLayer{i + 1}.", {"cse": "encoder_cSE", "sse": "encoder_sSE"}, kinds, f[i],
             depth // 2 ** i, sh, ch, clamp)
    for j in range(levels - 1):
        lv = levels - 2 - j
        _cpi(t, f"DecoderLayer{j + 1}.basic_module.Conv1", f[lv] + f[lv + 1], f[lv], 3)
        _cpi(t, f"DecoderLayer{j + 1}.basic_module.Conv2", f[lv], f[lv], 3)
        if preset != "PEunet3d":
            _att(t, f"DecoderLayer{j + 1}.", {"cse": "decoder_cSE", "sse": "decoder_sSE"}, kinds, f[lv],
                 depth // 2 ** lv, sh, ch, clamp)
    t["final_conv.weight"], t["final_conv.bias"] = (cout, f[0], 1, 1, 1), (cout,)
    return t


def _vres(t, prefix, rep, cin, cout):
    idx = 0
    for i in range(rep):
        t[f"{prefix}.convblock.{idx}.weight"] = (cout, cin if i == 0 else cout, 5, 5, 5)
        t[f"{prefix}.convblock.{idx}.bias"] = (cout,)
        idx += 1
        if i < rep - 1:
            t[f"{prefix}.convblock.{idx}.weight"] = (cout,)
            idx += 1
        t[f"{prefix}.convblock.{idx}.weight"] = t[f"{prefix}.convblock.{idx}.bias"] = (cout,)
        idx += 1
    t[f"{prefix}.final_nolinear_activation.weight"] = (cout,)


def vnet_table(preset, init=4, cin=1, cout=3, depth=32, sh=8, ch=4):
    ch = 8 if preset == "cSEvnet" else ch
    kinds, f, t = VNET_KINDS[preset], [init * 2 ** k for k in range(4)], {}
    reps, clamp = (1, 2, 3, 3), preset != "agscSEvnet"  # PAM slice FCs use D // h unclamped (may be 0)
    for k in range(4):
        _vres(t, f"Encoder_layer{k + 1}.conv_layer", reps[k], cin if k == 0 else f[k - 1], f[k] // 2)
        _cpi(t, f"Encoder_layer{k + 1}.downsample_layer", f[k] // 2, f[k], 2)
        _att(t, f"Encoder_layer{k + 1}.", {"cse": "cSE", "sse": "sSE"}, kinds, f[k] // 2, depth // 2 ** k, sh, ch,
             clamp)
    _cpi(t, "Bottleneck_layer", f[3], f[3], 5)
    if kinds:
        _fc(t, "Bottleneck_cSE", f[3], min(ch, f[3]))
    outs = [f[2], f[1], f[0], f[0] // 2]
    ins = [f[3], f[2], f[1], f[0]]
    for j in range(4):
        t[f"Decoder_layer{j + 1}.upsample_layer.convtranspose3d.weight"] = (ins[j], outs[j], 2, 2, 2)
        t[f"Decoder_layer{j + 1}.upsample_layer.convtranspose3d.bias"] = (outs[j],)
        for n in ("pReLU.weight", "instancenorm.weight", "instancenorm.bias"):
            t[f"Decoder_layer{j + 1}.upsample_layer.{n}"] = (outs[j],)
        _vres(t, f"Decoder_layer{j + 1}.conv_layer", reps[3 - j], ins[j], outs[j])
        _att(t, f"Decoder_layer{j + 1}.", {"cse": "cSE", "sse": "sSE"}, kinds, outs[j], depth // 2 ** (3 - j), sh, ch,
             clamp)
    t["final_conv.weight"], t["final_conv.bias"] = (cout, f[0] // 2, 1, 1, 1), (cout,)
    return t


def fake_state(table, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(s, generator=g) + (0.25 if k.endswith("pReLU.weight") else 0.0)
            for k, s in table.items()}


# ------------------------------------------------------------------ functional reference forward
def _f_cpi(x, sd, p, pad):
    x = F.conv3d(x, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=pad)
    x = F.prelu(x, sd[f"{p}.pReLU.weight"])
    return F.instance_norm(x, weight=sd[f"{p}.instancenorm.weight"], bias=sd[f"{p}.instancenorm.bias"])


def _f_fc(z, sd, p):
    return torch.sigmoid(F.linear(F.relu(F.linear(z, sd[f"{p}.fc.0.weight"], sd[f"{p}.fc.0.bias"])),
                                  sd[f"{p}.fc.2.weight"], sd[f"{p}.fc.2.bias"]))


def _f_att(x, sd, prefix, names, kinds):
    for kind in kinds:
        if kind == "cse":
            x = x * _f_fc(x.mean((2, 3, 4)), sd, f"{prefix}{names['cse']}")[:, :, None, None, None]
        elif kind == "sse":  # one FC per channel over the slices, as the reference loops
            x = torch.stack([x[:, c] * _f_fc(x[:, c].mean((2, 3)), sd,
                                             f"{prefix}{names['sse']}.Slice_SE_encoder.{c}")[:, :, None, None]
                             for c in range(x.shape[1])], dim=1)
        elif kind == "pe":
            p = f"{prefix}pe_layer"
            s = (x.mean((3, 4), keepdim=True) + x.mean((2, 4), keepdim=True) + x.mean((2, 3), keepdim=True)) / 3
            s = F.conv3d(F.prelu(F.conv3d(s, sd[f"{p}.conv_c.weight"], sd[f"{p}.conv_c.bias"]),
                                 sd[f"{p}.relu.weight"]), sd[f"{p}.conv_cT.weight"], sd[f"{p}.conv_cT.bias"])
            x = x * torch.sigmoid(s)
    return x


def reference_unet_forward(sd, x, preset, levels=4):
    kinds, mode = UNET_KINDS[preset], ("trilinear" if preset == "PEunet3d" else "nearest")
    skips = []
    for i in range(1, levels + 1):
        if i > 1:
            x = F.max_pool3d(x, 2)
        x = _f_cpi(x, sd, f"EncoderLayer{i}.basic_module.Conv1", 1)
        x = _f_cpi(x, sd, f"EncoderLayer{i}.basic_module.Conv2", 1)
        x = _f_att(x, sd, f"EncoderLayer{i}.", {"cse": "encoder_cSE", "sse": "encoder_sSE"}, kinds)
        skips.append(x)
    x = skips.pop()
    for j in range(1, levels):
        skip = skips.pop()
        x = torch.cat([skip, F.interpolate(x, size=skip.shape[2:], mode=mode)], dim=1)
        x = _f_cpi(x, sd, f"DecoderLayer{j}.basic_module.Conv1", 1)
        x = _f_cpi(x, sd, f"DecoderLayer{j}.basic_module.Conv2", 1)
        if preset != "PEunet3d":
            x = _f_att(x, sd, f"DecoderLayer{j}.", {"cse": "decoder_cSE", "sse": "decoder_sSE"}, kinds)
    return torch.softmax(F.conv3d(x, sd["final_conv.weight"], sd["final_conv.bias"]), dim=1)


def _f_vres(x, identity, sd, p, rep):
    idx = 0
    for i in range(rep):
        x = F.conv3d(x, sd[f"{p}.convblock.{idx}.weight"], sd[f"{p}.convblock.{idx}.bias"], padding=2)
        idx += 1
        if i < rep - 1:
            x = F.prelu(x, sd[f"{p}.convblock.{idx}.weight"])
            idx += 1
        x = F.instance_norm(x, weight=sd[f"{p}.convblock.{idx}.weight"], bias=sd[f"{p}.convblock.{idx}.bias"])
        idx += 1
    return F.prelu(x + identity, sd[f"{p}.final_nolinear_activation.weight"])


def reference_vnet_forward(sd, x, preset):
    kinds, names, reps = VNET_KINDS[preset], {"cse": "cSE", "sse": "sSE"}, (1, 2, 3, 3)
    feats = []
    for k in range(1, 5):
        feat = _f_att(_f_vres(x, x, sd, f"Encoder_layer{k}.conv_layer", reps[k - 1]), sd,
                      f"Encoder_layer{k}.", names, kinds)
        feats.append(feat)
        p = f"Encoder_layer{k}.downsample_layer"
        x = F.conv3d(feat, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], stride=2)
        x = F.instance_norm(F.prelu(x, sd[f"{p}.pReLU.weight"]), weight=sd[f"{p}.instancenorm.weight"],
                            bias=sd[f"{p}.instancenorm.bias"])
    x = _f_cpi(x, sd, "Bottleneck_layer", 2)
    if kinds:
        x = _f_att(x, sd, "Bottleneck_", {"cse": "cSE"}, ("cse",))
    for j in range(1, 5):
        p = f"Decoder_layer{j}.upsample_layer"
        up = F.conv_transpose3d(x, sd[f"{p}.convtranspose3d.weight"], sd[f"{p}.convtranspose3d.bias"], stride=2)
        up = F.instance_norm(F.prelu(up, sd[f"{p}.pReLU.weight"]), weight=sd[f"{p}.instancenorm.weight"],
                             bias=sd[f"{p}.instancenorm.bias"])
        x = _f_vres(torch.cat([feats.pop(), up], dim=1), up, sd, f"Decoder_layer{j}.conv_layer", reps[4 - j])
        x = _f_att(x, sd, f"Decoder_layer{j}.", names, kinds)
    return torch.softmax(F.conv3d(x, sd["final_conv.weight"], sd["final_conv.bias"]), dim=1)


ORACLE_PRESETS = ["unet3d", "cSEunet3d", "scSEunet3d", "csSEunet3d", "PEunet3d", "vnet-ref", "cSEvnet",
                  "scSEvnet", "csSEvnet"]


@pytest.mark.parametrize("preset", ORACLE_PRESETS)
def test_converted_reference_checkpoint_matches_reference_forward(preset):
    vnet = "vnet" in preset
    sd = fake_state(vnet_table(preset) if vnet else unet_table(preset))
    name, kwargs, state = convert_amis_state_dict(sd, preset)
    assert name == preset and kwargs["init_features"] == 4 and kwargs["out_channels"] == 3
    model = create_model(name, **kwargs)
    model.load_state_dict(state, strict=True)
    assert count_parameters(model) == sum(v.numel() for v in sd.values())
    model.eval()
    x = torch.randn(1, 1, 32, 32, 32) if vnet else torch.randn(1, 1, 16, 12, 10)  # 2+ voxels at the bottom
    expected = (reference_vnet_forward if vnet else reference_unet_forward)(sd, x, preset)
    with torch.no_grad():
        got = torch.softmax(model(x), dim=1)
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("preset", ["agscSEunet3d", "agscSEvnet"])
def test_pam_presets_load_reference_keys(preset):
    sd = fake_state(vnet_table(preset) if "vnet" in preset else unet_table(preset))
    name, kwargs, state = convert_amis_state_dict(sd, preset)
    model = create_model(name, **kwargs)
    model.load_state_dict(state, strict=True)
    # channel 1 of the first encoder's reference slice FC lands in row 1 of the stacked weight
    pam = model.encoder_attn[0].attn
    ref = "Encoder_layer1.sSE" if "vnet" in preset else "EncoderLayer1.encoder_sSE"
    assert torch.equal(pam.slice.fc1_weight[1], sd[f"{ref}.Slice_SE_encoder.1.fc.0.weight"])
    assert not torch.equal(pam.slice.fc1_weight[0], pam.slice.fc1_weight[1])
    size = (32, 32, 32) if "vnet" in preset else (16, 16, 16)
    assert model.eval()(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_converter_infers_unambiguous_presets_and_rejects_mismatches():
    assert infer_amis_preset(unet_table("cSEunet3d")) == "cSEunet3d"
    assert infer_amis_preset(vnet_table("vnet-ref")) == "vnet-ref"
    assert infer_amis_preset(unet_table("scSEunet3d")) is None
    sd = {f"module.{k}": v for k, v in fake_state(unet_table("unet3d")).items()}  # DataParallel prefix
    assert convert_amis_state_dict(sd)[0] == "unet3d"
    with pytest.raises(ValueError, match="pass it explicitly"):
        convert_amis_state_dict(fake_state(unet_table("scSEunet3d")))
    with pytest.raises(ValueError, match="no place"):
        convert_amis_state_dict(fake_state(unet_table("cSEunet3d")), "unet3d")
    with pytest.raises(KeyError):
        convert_amis_state_dict(fake_state(unet_table("unet3d")), "cSEunet3d")


def test_amis_reference_converter_is_registered():
    convert = pytest.importorskip("attnseg.models.convert")
    assert "amis-reference" in convert.list_converters()
    result = convert.get_converter("amis-reference")(fake_state(vnet_table("cSEvnet")), "cSEvnet")
    model = result.build()
    assert model.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
