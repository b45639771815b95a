"""torchrun + DistributedDataParallel on CPU (gloo) equals one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from attnseg.train.checkpoint import load_checkpoint
from attnseg.train.trainer import run_training
from helpers.tiny import tiny_config, write_brats


def test_torchrun_two_ranks_equals_single_process(tmp_path):
    data = write_brats(tmp_path / "brats", 5, seed=4)
    common = dict(in_channels=4, data__root=str(data), data__val_fraction=0.4, train__epochs=2,
                  train__schedule={"name": "constant"}, validation__interval=1,
                  # SGD: the update is linear in the gradient, so float rounding of the all-reduce
                  # stays at rounding level (Adam's first steps, g/sqrt(g²), amplify it for g ≈ 0)
                  train__optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True})
    ddp_cfg = tiny_config(tmp_path / "ddp", "run", data__batch_size=1, log__tensorboard=True, **common)
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(ddp_cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "attnseg", "train", "--config", str(cfg_file)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run = tmp_path / "ddp" / "run"
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2
    digests = ck["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold bit-identical weights
    # rank 0 alone wrote the run folder: one event file, one header line, one row per epoch
    assert len(list((run / "tensorboard").iterdir())) == 1
    log = (run / "log.txt").read_text()
    assert log.count("training unet") == 1
    # every parameter gets a gradient: the probe leaves DDP's per-iteration graph search off
    assert "find_unused_parameters" not in log and "weights differ" not in log
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # one process, batch 2 = the same global batch and the same samples per iteration
    single = run_training(tiny_config(tmp_path / "single", "run", data__batch_size=2, **common))
    ref = load_checkpoint(single.run_dir / "checkpoints" / "last.pt")
    diff = max(float((ck["model"][k] - v).abs().max()) for k, v in ref["model"].items())
    assert diff <= 1e-5, diff
    for name in ("train_loss", "val_dice_mean"):
        assert abs(float(ck["best_metric"]) - float(ref["best_metric"])) < 1e-5
        assert abs(single.history[-1][name] - _csv_last(run, name)) < 1e-5


def _csv_last(run: Path, key: str) -> float:
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return float(rows[-1][key])
