"""Reference-checkpoint conversion: a test-written fake reference checkpoint (reference key names
and shapes, generated from a key table below, independent of the converter's own mapping) must
load exactly, strictly and into the right places; the CLI writes a loadable attnseg checkpoint."""

import pytest
import torch

from attnseg.cli.main import main
from attnseg.models import count_parameters, create_model, load_reference_checkpoint
from attnseg.models.convert import (
    ConvertedCheckpoint,
    convert,
    get_converter,
    list_converters,
    register_converter,
)
from attnseg.train.checkpoint import build_model_from_checkpoint, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


CH = (4, 8, 8, 16, 16)  # tiny widths (basic residual blocks: last width <= 320)
S = 32  # input edge: instance norm needs more than one voxel at the 1/16 level
NC, IN = 3, 4


# ---- the fake reference: key names and shapes as the reference modules name them ----------


def _convnorm(p, cin, cout, k, bn=False, prelu=True):
    keys = {f"{p}.conv.weight": (cout, cin, k, k, k)}
    if bn:
        keys.update({f"{p}.norm.weight": (cout,), f"{p}.norm.bias": (cout,), f"{p}.norm.running_mean": (cout,),
                     f"{p}.norm.running_var": (cout,), f"{p}.norm.num_batches_tracked": ()})
    if prelu:
        keys[f"{p}.act.weight"] = (1,)
    return keys


def _resblock(p, cin, cout):  # instance norm without affine: no norm keys
    return {**_convnorm(f"{p}.conv1", cin, cout, 3), **_convnorm(f"{p}.conv2", cout, cout, 3),
            **_convnorm(f"{p}.identity_mapping", cin, cout, 1), f"{p}.act.weight": (1,)}


def _conv(p, cin, cout, k=1):
    return {f"{p}.weight": (cout, cin, k, k, k), f"{p}.bias": (cout,)}


def _unet_keys(nc, ds=False):
    c = CH
    keys = {}
    for i, cin in enumerate((IN,) + c[:-1]):
        keys.update(_resblock(f"backbone.conv{i}_0", cin, c[i]))
    for name, i in (("conv3_1", 3), ("conv2_2", 2), ("conv1_3", 1), ("conv0_4", 0)):
        keys.update(_resblock(name, c[i] + c[i + 1], c[i]))
    keys.update(_conv("convds0", c[0], nc))
    if ds:
        keys.update({**_conv("convds3", c[3], nc), **_conv("convds2", c[2], nc), **_conv("convds1", c[1], nc)})
    return keys


def _gate_keys():
    c, keys = CH, {}
    for i in range(4):
        g = f"gate{i + 1}_{i}"
        keys.update({**_convnorm(f"{g}.W_g", c[i + 1], c[i], 1, bn=True),
                     **_convnorm(f"{g}.W_x", c[i], c[i], 1, bn=True), **_convnorm(f"{g}.psi.0", c[i], 1, 1, bn=True)})
    return keys


def _panet_keys(head):
    c2, c3, c4 = CH[2:]
    keys = _unet_keys(NC, ds=True)
    keys.update({**_conv("conv_down", 1, 1, 3), **{f"skip_{i}.param": (1,) for i in range(4)}})
    if head == "fcn":
        keys.update({**_convnorm("one_stage.conv5_4", c4, c3, 1, bn=True),
                     **_convnorm("one_stage.conv4_0", c3, c3, 3, bn=True),
                     **_convnorm("one_stage.conv4_3", c3, c2, 1, bn=True),
                     **_convnorm("one_stage.conv3_0", c2, c2, 3, bn=True), **_conv("one_stage.conv_out", c2, 1)})
    else:
        m = c2 // 2
        keys.update({**_convnorm("one_stage.conv3_0", c2, m, 1, bn=True),
                     **_convnorm("one_stage.conv4_0", c3, m, 1, bn=True),
                     **_convnorm("one_stage.conv5_0", c4, m, 1, bn=True),
                     **_convnorm("one_stage.conv4_5", 2 * m, m, 3, bn=True),
                     **_convnorm("one_stage.conv3_4", 2 * m, m, 3, bn=True), **_conv("one_stage.conv_out", 3 * m, 1)})
    return keys


FAKE_TABLES = {
    "unet": lambda: _unet_keys(NC),
    "enhanced": lambda: _unet_keys(NC, ds=True),
    "attention": lambda: {**_unet_keys(NC), **_gate_keys()},
    "cascade": lambda: {**{f"first_stage.{k}": v for k, v in _unet_keys(1).items()},
                        **{f"second_stage.{k}": v for k, v in _unet_keys(NC).items()}},
    "panet": lambda: _panet_keys("fcn"),
    "panet-parallel": lambda: _panet_keys("parallel"),
}
ARCH = {"panet-parallel": "fuse"}


def fake_reference_checkpoint(table: str, seed: int = 0) -> dict:
    """A reference-style checkpoint with random values under the reference key names."""
    g = torch.Generator().manual_seed(seed)
    net = {}
    for k, shape in FAKE_TABLES[table]().items():
        if k.endswith("num_batches_tracked"):
            net[k] = torch.tensor(17)
        elif k.endswith("running_var"):
            net[k] = torch.rand(shape, generator=g) + 0.5
        else:
            net[k] = torch.randn(shape, generator=g) * 0.2
    return {"net": net, "optimizer": {"state": {}, "param_groups": []}, "epoch": 12}


# ---- tests ---------------------------------------------------------------------------------

EXPECTED = {"unet": "unet-res", "enhanced": "enhanced-unet", "attention": "attention-unet-res",
            "cascade": "cascaded-unet", "panet": "prior-attention-net", "panet-parallel": "prior-attention-net"}


@pytest.mark.parametrize("table", list(FAKE_TABLES))
def test_fake_reference_checkpoint_loads_exactly(table, tmp_path):
    ckpt = fake_reference_checkpoint(table)
    path = tmp_path / "ref.pkl"
    torch.save(ckpt, path)
    model = load_reference_checkpoint(path, ARCH.get(table, table))
    assert not model.training
    # every reference tensor lands in exactly one model tensor, and nothing else is in the model
    sd = model.state_dict()
    assert len(sd) == len(ckpt["net"])
    assert count_parameters(model) == sum(v.numel() for k, v in ckpt["net"].items()
                                          if not any(b in k for b in ("running_", "num_batches")))
    mapped = {model.reference_key(k): v for k, v in sd.items()}
    assert mapped.keys() == ckpt["net"].keys()
    assert all(torch.equal(mapped[k], v) for k, v in ckpt["net"].items())
    x = torch.randn(1, IN, S, S, S)
    outs = model.forward_dict(x)
    assert set(outs) == set(model.output_keys) and outs["out"].shape == (1, NC, S, S, S)


def test_known_weights_land_in_the_right_modules():
    ckpt = fake_reference_checkpoint("panet")
    net = ckpt["net"]
    m = load_reference_checkpoint(ckpt, "panet")
    assert m.prior_head_type == "fcn" and m.num_classes == NC and m.channels == CH
    assert torch.equal(m.encoder[2].conv_a.conv.weight, net["backbone.conv2_0.conv1.conv.weight"])
    assert torch.equal(m.encoder[1].shortcut.conv.weight, net["backbone.conv1_0.identity_mapping.conv.weight"])
    assert torch.equal(m.encoder[1].shortcut.unused_prelu, net["backbone.conv1_0.identity_mapping.act.weight"])
    # level 0 keeps width 4 at stride 1: the reference builds (and never applies) its 1x1 shortcut
    assert torch.equal(m.encoder[0].unused_shortcut.conv.weight, net["backbone.conv0_0.identity_mapping.conv.weight"])
    assert torch.equal(m.decoder[3].conv_b.conv.weight, net["conv3_1.conv2.conv.weight"])
    assert torch.equal(m.decoder[0].act.weight, net["conv0_4.act.weight"])
    assert torch.equal(m.prior_gates[3].scale, net["skip_3.param"])
    assert torch.equal(m.prior_down.weight, net["conv_down.weight"])
    assert torch.equal(m.prior_head.proj4.norm.running_var, net["one_stage.conv5_4.norm.running_var"])
    assert torch.equal(m.ds["level2"].bias, net["convds2.bias"])
    assert int(m.prior_head.fuse2.norm.num_batches_tracked) == 17


def test_clean_layout_drops_only_unused_and_gives_identical_outputs():
    ckpt = fake_reference_checkpoint("attention", seed=3)
    ref = load_reference_checkpoint(ckpt, "attention")
    res = convert("panet-reference", ckpt, "attention", reference_layout=False)
    clean = res.build()
    # 30 PReLU slopes of no-activation units + the level-0 shortcut conv (4 -> 4, stride 1, never applied)
    dropped = sorted(res.source["dropped_unused"])
    assert dropped == sorted([k for k in ckpt["net"] if k.endswith(("conv2.act.weight", "identity_mapping.act.weight"))
                              or (k.startswith("gate") and k.endswith("act.weight"))]
                             + ["backbone.conv0_0.identity_mapping.conv.weight"])
    assert len(dropped) == 31
    assert count_parameters(ref) - count_parameters(clean) == 30 + IN * CH[0]
    x = torch.randn(2, IN, S, S, S)
    with torch.no_grad():
        assert torch.equal(ref(x), clean(x))


def test_data_parallel_prefix_and_bare_state_dict_are_accepted():
    net = fake_reference_checkpoint("unet")["net"]
    a = load_reference_checkpoint({f"module.{k}": v for k, v in net.items()}, "unet")
    b = load_reference_checkpoint(net, "unet-res")
    x = torch.randn(1, IN, S, S, S)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_mismatched_checkpoints_are_clear_errors():
    ckpt = fake_reference_checkpoint("panet")
    with pytest.raises(ValueError, match="unexpected"):
        load_reference_checkpoint(ckpt, "unet")  # panet weights into a plain U-Net
    broken = {"net": {k: v for k, v in ckpt["net"].items() if k != "skip_2.param"}}
    with pytest.raises(ValueError, match="missing 1"):
        load_reference_checkpoint(broken, "panet")
    wrong = {"net": {**ckpt["net"], "convds1.weight": torch.zeros(NC + 1, CH[1], 1, 1, 1)}}
    with pytest.raises(ValueError, match="shape"):
        load_reference_checkpoint(wrong, "panet")
    with pytest.raises(ValueError, match="Unknown model 'no-such-arch'"):
        load_reference_checkpoint(ckpt, "no-such-arch")


def test_converter_registry():
    assert "panet-reference" in list_converters()

    @register_converter("test-identity")
    def _conv(ckpt, arch=None, **kw):
        return ConvertedCheckpoint("unet-res", dict(channels=CH, **kw), dict(ckpt), {})

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_converter("test-identity")(_conv)
        src = create_model("unet-res", channels=CH).state_dict()
        assert torch.equal(convert("test-identity", src).build().head_out.weight, src["head_out.weight"])
    finally:
        from attnseg.models.convert import CONVERTERS

        CONVERTERS.pop("test-identity")
    with pytest.raises(KeyError, match="unknown checkpoint source"):
        get_converter("test-identity")


def test_cli_convert_checkpoint_writes_loadable_attnseg_checkpoint(tmp_path, capsys):
    ckpt = fake_reference_checkpoint("panet-parallel", seed=5)
    src, dst = tmp_path / "panet_Epoch_12.pkl", tmp_path / "out" / "panet.pt"
    torch.save(ckpt, src)
    assert main(["convert-checkpoint", "--from", "panet-reference", "--arch", "panet", str(src), str(dst)]) == 0
    saved = load_checkpoint(dst)  # weights_only=True
    assert saved["model_name"] == "prior-attention-net" and saved["model_kwargs"]["head"] == "parallel"
    assert saved["source"]["epoch"] == 12 and "attnseg_version" in saved
    model, _ = build_model_from_checkpoint(dst)
    direct = load_reference_checkpoint(src, "fuse")
    x = torch.randn(1, IN, S, S, S)
    with torch.no_grad():
        assert all(torch.equal(model.forward_dict(x)[k], v) for k, v in direct.forward_dict(x).items())
    assert not list(dst.parent.glob("*.tmp"))
    # errors are one line, exit code 1
    assert main(["convert-checkpoint", "--arch", "unet", str(src), str(tmp_path / "bad.pt")]) == 1
    assert "unexpected" in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()
    assert main(["convert-checkpoint", str(tmp_path / "missing.pkl"), str(tmp_path / "x.pt")]) == 1
