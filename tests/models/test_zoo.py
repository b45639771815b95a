"""``attnseg zoo`` writes the model zoo card from the registries."""

from __future__ import annotations

import re

from attnseg.cli.main import main
from attnseg.cli.zoo import sites_for
from attnseg.models import count_parameters, create_model


def test_zoo_sites_follow_defaults_and_validity():
    assert sites_for("unet", "cse", 3) == ("encoder", "decoder")  # the backbone's default sites
    assert sites_for("unet", "ag", 3) == ("skip",)  # a gate: only where it is valid
    assert sites_for("deepmedic", "ag", 3) == ()  # no skip connections → not a valid pair


def test_zoo_writes_markdown_card(tmp_path):
    out = tmp_path / "zoo.md"
    rc = main(["zoo", "--out", str(out), "--dims", "2", "--size", "32", "--backbones", "fcn",
               "--attention", "cse", "ag", "--no-latency"])
    assert rc == 0
    text = out.read_text()
    assert "input `1x1x32x32`" in text and "latency not measured" in text
    assert "1 backbones x 2 attention modules, 3 configurations" in text
    rows = {m.group(1): m for m in re.finditer(r"^\| fcn \| ([\w()-]+) \| ([\w,-]+) \| ([\d,]+) \|", text, re.M)}
    assert set(rows) == {"(none)", "cse", "ag"}
    assert rows["ag"].group(2) == "skip" and rows["cse"].group(2) == "encoder"
    for att, sites in (("ag", ("skip",)), ("cse", ("encoder",))):
        expected = count_parameters(create_model("fcn", spatial_dims=2, in_channels=1, out_channels=2,
                                                 attention=att, attention_at=sites))
        assert int(rows[att].group(3).replace(",", "")) == expected


def test_zoo_rejects_unknown_backbone(tmp_path, capsys):
    assert main(["zoo", "--out", str(tmp_path / "z.md"), "--backbones", "nope", "--no-latency"]) == 1
    assert "not backbones" in capsys.readouterr().err
