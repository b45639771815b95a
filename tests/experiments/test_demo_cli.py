"""A miniature of ``attnseg demo`` end to end through the CLI: tiny data, a few iterations."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from attnseg.cli.main import main

TINY = [
    "device=cpu",  # pinned: never the GPU of a CI host
    "train.epochs=2", "train.iterations_per_epoch=2", "train.schedule.warmup_epochs=0",
    "train.schedule.flat_epochs=1", "validation.interval=1", "data.patch_size=[32,32,32]",
    "validation.roi_size=[32,32,32]", "data.batch_size=1", "model.kwargs.channels=[4,4,8,8,8]",
    "log.tensorboard=false",
]


@pytest.mark.slow
def test_demo_miniature_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--train-cases", "3", "--test-cases", "2"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    printed = capsys.readouterr().out
    run = out / "runs" / "panet-seed0"
    # data: train and held-out folders in the BraTS layout, test cases numbered after the training ones
    assert sorted(p.name for p in (out / "data" / "train").iterdir() if p.is_dir()) == [
        "BraTS20_Synth_001", "BraTS20_Synth_002", "BraTS20_Synth_003"]
    test_ids = sorted(p.name for p in (out / "data" / "test").iterdir() if p.is_dir())
    assert test_ids == ["BraTS20_Synth_004", "BraTS20_Synth_005"]
    # the demo's data are the realistic phantom (docs/data.md)
    for part in ("train", "test"):
        assert json.loads((out / "data" / part / "synth_info.json").read_text())["difficulty"] == "realistic"
    # training artefacts
    for rel in ("config.yaml", "env.json", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / rel).is_file(), rel
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # predictions in the source geometry and the BraTS 2020 label convention
    for cid in test_ids:
        pred = nib.load(run / "predictions" / f"{cid}.nii.gz")
        ref = nib.load(out / "data" / "test" / cid / f"{cid}_seg.nii.gz")
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}
    # evaluation: one row per case and region, summary with the three regions and their mean
    with open(run / "eval" / "per_case.csv") as fh:
        per_case = list(csv.DictReader(fh))
    assert sorted({(r["case_id"], r["region"]) for r in per_case}) == sorted(
        (c, reg) for c in test_ids for reg in ("ET", "TC", "WT"))
    for r in per_case:
        assert 0.0 <= float(r["dice"]) <= 1.0
    summary = json.loads((run / "eval" / "summary.json").read_text())["summary"]
    assert set(summary) == {"ET", "TC", "WT", "mean"}
    # report and the final table
    assert (run / "report" / "index.html").is_file()
    for region in ("ET", "TC", "WT", "mean"):
        assert region in printed
    assert str(run / "report" / "index.html") in printed

    # re-running with --resume reuses data, training and predictions
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "reusing 3 train phantom cases" in err and "training already finished" in err
    assert err.count("skipped (--resume)") == 2
