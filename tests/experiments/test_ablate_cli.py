"""``attnseg ablate`` on tiny phantom data: table layout, time budget, resumability."""

import json

import pytest
import yaml

from attnseg.cli.main import main
from attnseg.data.synth import make_synth_brats


@pytest.mark.slow
def test_ablate_table_budget_and_resume(tmp_path, capsys):
    data = tmp_path / "data"
    make_synth_brats(data, cases=3, spacing=2, seed=0)
    cfg = {
        "device": "cpu",  # pinned: never the GPU of a CI host
        "task": {"kind": "brats-regions", "num_classes": 4, "in_channels": 4},
        "model": {"kwargs": {"in_channels": 4, "out_channels": 4, "features": [4, 8]}},
        "data": {"root": str(data), "layout": "brats", "val_fraction": 0.34, "patch_size": [16, 16, 16],
                 "batch_size": 1, "augmentation": {"p_deform": 0.0}},
        "train": {"epochs": 5, "iterations_per_epoch": 1,
                  "schedule": {"name": "warmup_cosine", "warmup_epochs": 0, "flat_epochs": 1}},
        "loss": {"deep_supervision": {"enabled": False}, "prior": {"enabled": False}},
        "validation": {"interval": 10, "roi_size": [64, 64, 64], "max_cases": 1},
        "log": {"tensorboard": False, "curves": False},
    }
    cfg_path = tmp_path / "ablate.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "abl"
    args = ["ablate", "--config", str(cfg_path), "--backbones", "unet", "--attention", "none,cse",
            "--budget-minutes", "0", "--out", str(out)]
    assert main(args) == 0
    table = (out / "ablation.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| unet")]
    assert [r.split("|")[2].strip() for r in rows] == ["none", "cse"]
    header = next(line for line in table.splitlines() if line.startswith("| backbone"))
    for col in ("dice_ET", "dice_TC", "dice_WT", "dice_mean", "params", "minutes"):
        assert col in header
    recs = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert set(recs) == {"unet__none__s0", "unet__cse__s0"}
    # a zero-minute budget stops after the first epoch, validated even off the interval
    assert all(r["epochs"] == 1 and r["iterations"] == 1 for r in recs.values())
    assert recs["unet__cse__s0"]["params"] > recs["unet__none__s0"]["params"]
    capsys.readouterr()
    assert main(args) == 0
    assert "2 already finished" in capsys.readouterr().err
