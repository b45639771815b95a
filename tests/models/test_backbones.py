"""Behaviour of every backbone: shapes for 2D/3D, batch 1 and 2, odd and non-cubic sizes (or a
clear ValueError), deep-supervision keys, gradients to every parameter, torch.export of the
inference path, ONNX parity, and a forward/backward smoke test over every (backbone,
attention, site) combination that :func:`attnseg.models.sites.valid_sites` calls valid."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from attnseg.models import create_model, get_model_entry
from attnseg.models.sites import list_backbones, list_plugin_attention, valid_combinations, valid_sites

# tiny configurations (a few channels, 2–3 levels): the registry's ``test_kwargs`` tag of each backbone
TINY = {b: dict(get_model_entry(b).tags["test_kwargs"]) for b in list_backbones()}
# odd, non-cubic sizes for backbones that take any size (``divisor`` tag 1), and non-cubic sizes
# that are multiples of 4 for the others
ODD = {2: (13, 10), 3: (9, 10, 7)}
EVEN = {2: (12, 8), 3: (8, 12, 8)}


def test_registry_lists_the_backbones():
    assert {"unet", "vnet", "deepmedic", "voxresnet", "denseunet", "hdenseunet", "fcn",
            "deeplabv3plus"} <= set(list_backbones())


def _build(name: str, dims: int, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, **{**TINY[name], **kw})


def _cases():
    for name in TINY:
        for dims in get_model_entry(name).dims:
            yield name, dims


@pytest.mark.parametrize("name,dims", list(_cases()))
@pytest.mark.parametrize("batch", [1, 2])
def test_shapes_batches_odd_sizes_and_gradients(name, dims, batch):
    model = _build(name, dims)
    tags = get_model_entry(name).tags
    size = ODD[dims] if tags["divisor"] == 1 else EVEN[dims]
    assert all(s % tags["divisor"] == 0 for s in size)
    x = torch.randn(batch, 2, *size)
    model.train()
    out = model(x)
    assert set(out) == {"out", *tags["aux_outputs"]}
    for key, y in out.items():
        assert y.shape == (batch, 3, *size), key
    if batch == 2:  # every parameter receives a gradient from the training outputs
        sum(v.square().mean() for v in out.values()).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert y.shape == (batch, 3, *size)
        assert torch.allclose(model.predict(x), y)
        # batch elements are independent in eval mode (no cross-sample statistics)
        if batch == 2:
            assert torch.allclose(model(x[1:]), y[1:], atol=1e-5)


def test_unet_deep_supervision_levels_are_full_resolution():
    model = _build("unet", 3, features=(4, 8, 8, 8), deep_supervision=True).train()
    out = model(torch.randn(1, 2, 17, 18, 19))  # 2+ voxels at the bottleneck for instance norm
    assert set(out) == {"out", "level1", "level2"}
    assert all(v.shape == (1, 3, 17, 18, 19) for v in out.values())
    assert _build("unet", 3).train()(torch.randn(1, 2, 8, 8, 8)).keys() == {"out"}


def test_voxresnet_output_is_the_sum_of_the_auxiliary_classifiers():
    model = _build("voxresnet", 3).train()
    out = model(torch.randn(1, 2, 8, 9, 10))
    assert torch.allclose(out["out"], out["aux1"] + out["aux2"] + out["aux3"], atol=1e-6)


def test_size_errors_name_the_constraint():
    with pytest.raises(ValueError, match="multiple of 4"):
        _build("vnet", 3)(torch.randn(1, 2, 10, 8, 8))
    padded = _build("vnet", 3, pad_input=True).eval()
    assert padded(torch.randn(1, 2, 9, 10, 7)).shape == (1, 3, 9, 10, 7)
    with pytest.raises(ValueError, match=">= 4"):
        _build("unet", 2)(torch.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match="3D only"):
        create_model("hdenseunet", spatial_dims=2)
    with pytest.raises(ValueError, match="input channels"):
        _build("unet", 2)(torch.randn(1, 1, 8, 8))


def test_deepmedic_valid_geometry():
    model = _build("deepmedic", 3, mode="valid").eval()  # 4 layers, factor 3: input = output + 24
    assert model.input_size_for((3, 6, 9)) == (27, 30, 33)
    assert model(torch.randn(2, 2, 27, 30, 33)).shape == (2, 3, 3, 6, 9)
    with pytest.raises(ValueError, match="multiple of 3"):
        model(torch.randn(1, 2, 28, 30, 33))
    # valid geometry = the same-padded network's output away from the borders (normal pathway)
    valid = _build("deepmedic", 3, mode="valid", subsample_factors=()).eval()
    same = _build("deepmedic", 3, mode="same", subsample_factors=()).eval()
    same.load_state_dict(valid.state_dict())
    x = torch.randn(1, 2, 14, 12, 13)
    assert torch.allclose(valid(x), same(x)[..., 4:-4, 4:-4, 4:-4], atol=1e-5)


def test_vnet_any_number_of_input_channels():
    for cin in (1, 3, 4):
        model = create_model("vnet", spatial_dims=3, in_channels=cin, out_channels=2, features=(4, 8, 8),
                             kernel_size=3).eval()
        assert model(torch.randn(1, cin, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


@pytest.mark.parametrize("name", list(TINY))
def test_inference_path_exports(name):
    model = _build(name, 3).eval()
    x = torch.randn(1, 2, *EVEN[3])
    ep = torch.export.export(model, (x,))
    assert torch.allclose(ep.module()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_onnx_matches_torch(name):
    ort = pytest.importorskip("onnxruntime")
    model = _build(name, 3).eval()
    x = torch.randn(1, 2, *EVEN[3])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-4)


def test_valid_sites_rules():
    assert valid_sites("unet", "cse") == ("encoder", "decoder", "skip", "bottleneck")
    assert valid_sites("deepmedic", "cse") == ("encoder", "bottleneck")
    assert valid_sites("hdenseunet", "cse", 2) == ()
    if "ag" in list_plugin_attention():
        assert valid_sites("unet", "ag") == ("skip",)
        assert valid_sites("voxresnet", "ag") == ()
    with pytest.raises(ValueError, match="no attention site"):
        create_model("deepmedic", attention="cse", attention_at=("decoder",))


def _smoke_cases():
    """One case per valid (backbone, attention) pair with *all* its valid sites enabled at once, so
    every (backbone, attention, site) triple of ``valid_combinations`` runs forward and backward."""
    cases = [pytest.param(b, a, valid_sites(b, a, 3), 3, id=f"{b}-{a}-3d") for b in list_backbones()
             for a in list_plugin_attention() if valid_sites(b, a, 3)]
    cases += [pytest.param("unet", a, valid_sites("unet", a, 2), 2, id=f"unet-{a}-2d")
              for a in list_plugin_attention() if valid_sites("unet", a, 2)]
    return cases


def test_smoke_cases_cover_every_valid_triple():
    covered = {(c.values[0], c.values[1], s) for c in _smoke_cases() if c.values[3] == 3 for s in c.values[2]}
    assert covered == set(valid_combinations(3))


SMOKE_SIZE = {2: (8, 12), 3: (4, 8, 4)}
SMOKE_SIZE_DEEP = (8, 8, 8)  # stride-8 backbones: gates need 2+ voxels on the skip grid


@pytest.mark.parametrize("backbone,attention,sites,dims", _smoke_cases())
def test_attention_smoke(backbone, attention, sites, dims):
    size = SMOKE_SIZE_DEEP if backbone in ("fcn", "deeplabv3plus") and dims == 3 else SMOKE_SIZE[dims]
    torch.manual_seed(0)
    model = create_model(backbone, spatial_dims=dims, in_channels=1, out_channels=2, attention=attention,
                         attention_at=sites, input_size=size, **TINY[backbone]).train()
    built = [m for m in model.modules() if type(m).__name__ == "AttentionSite" and m.attn is not None]
    assert built, "no attention module was built"
    x = torch.randn(2, 1, *size, requires_grad=True)
    out = model(x)
    assert out["out"].shape == (2, 2, *size)
    sum(v.mean() for v in out.values()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
