"""Registry tags: declared per registry, unknown ones refused at registration, defaults for
models that declare none, and every registered model's tags agree with the model it builds."""

from __future__ import annotations

import pytest
import torch

from attnseg.attention import ATTENTION_TAGS
from attnseg.models import MODEL_TAGS, create_model, get_model_entry, list_models
from attnseg.models.sites import list_backbones
from attnseg.registry import Registry

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (root conftest)


def test_unknown_tag_is_an_error_and_registers_nothing():
    reg = Registry("model", tags=MODEL_TAGS)
    with pytest.raises(ValueError, match=r"unknown tag\(s\) \['img_size'\]"):
        reg.register("mine", img_size=64)(lambda **kw: None)
    assert "mine" not in reg
    with pytest.raises(ValueError, match="unknown tag"):
        Registry("attention module", tags=ATTENTION_TAGS).register("att", divisor=2)(lambda **kw: None)


def test_untagged_third_party_model_gets_the_defaults():
    reg = Registry("model", tags=MODEL_TAGS)
    reg.register("plugin-net", family="test")(lambda **kw: None)
    reg.register("tagged-net", channel_args=("in_channels", "num_classes"), divisor=8)(lambda **kw: None)
    assert reg.get("plugin-net").tags == MODEL_TAGS
    tags = reg.get("tagged-net").tags
    assert tags["channel_args"] == ("in_channels", "num_classes") and tags["divisor"] == 8
    assert tags["aux_outputs"] == () and tags["test_input"] is None


def test_cli_width_keys_come_from_the_channel_args_tag(monkeypatch):
    from attnseg.cli.train import _model_width_keys
    from attnseg.models import MODELS

    assert _model_width_keys("unet") == ("in_channels", "out_channels")
    assert _model_width_keys("not-registered-yet") == ("in_channels", None)
    reg = Registry("model", tags=MODEL_TAGS)
    reg.register("odd-net", channel_args=("in_ch", None))(lambda **kw: None)
    monkeypatch.setattr(MODELS, "get", reg.get)
    assert _model_width_keys("odd-net") == ("in_ch", None)


@pytest.mark.parametrize("name", list_models())
def test_tags_agree_with_the_model(name):
    """At the test configuration: ``test_input`` runs, training outputs are ``out`` + ``aux_outputs``,
    the ``channel_args`` set the widths, and a size off the ``divisor`` is refused naming it."""
    entry = get_model_entry(name)
    tags = entry.tags
    size = tuple(tags["test_input"])
    size = size[2:] if len(size) >= 4 else size  # a full (B, C, *spatial) shape or a spatial size
    assert len(size) in entry.dims
    assert all(s % tags["divisor"] == 0 for s in size)
    in_key, out_key = tags["channel_args"]
    kw = {**tags["test_kwargs"], in_key: 2, out_key: 3}
    if "spatial_dims" in entry.defaults:
        kw["spatial_dims"] = len(size)
    torch.manual_seed(0)
    model = create_model(name, **kw).train()
    with torch.no_grad():
        out = model(torch.randn(1, 2, *size))
    assert set(out) == {"out", *tags["aux_outputs"]}
    assert out["out"].shape == (1, 3, *size)
    if tags["divisor"] > 1:
        off = (*size[:-1], size[-1] + tags["divisor"] // 2)
        with pytest.raises(ValueError, match=f"not a multiple of {tags['divisor']}"):
            model(torch.randn(1, 2, *off))


@pytest.mark.parametrize("name", list_backbones())
def test_default_sites_tag_is_the_constructor_default(name):
    """``attention_at`` left out puts attention exactly where the ``default_sites`` tag says."""
    entry = get_model_entry(name)
    sites = tuple(entry.tags["default_sites"])
    assert set(sites) <= set(entry.tags["sites"])
    kw = dict(entry.tags["test_kwargs"], attention="cse")

    def keys(**extra) -> set[str]:
        return set(create_model(name, **{**kw, **extra}).state_dict())

    implicit = keys()
    assert implicit == keys(attention_at=sites)
    assert implicit != keys(attention=None)
