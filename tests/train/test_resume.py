"""Exact resume and crash safety of training checkpoints (CPU, deterministic)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from attnseg.train.checkpoint import load_checkpoint
from attnseg.train.trainer import run_training
from helpers.tiny import tiny_config, tiny_volumes

HERE = Path(__file__).parent


def _vols():
    return tiny_volumes(3, 0), tiny_volumes(1, 1)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_resume_gives_identical_weights_lrs_and_history(tmp_path):
    straight = run_training(tiny_config(tmp_path, "straight"), volumes=_vols())
    half = run_training(tiny_config(tmp_path, "split", train__stop_after_epochs=2), volumes=_vols())
    assert half.epochs_done == 2 and half.iterations == 2
    resumed = run_training(tiny_config(tmp_path, "split"), resume=True, volumes=_vols())
    assert resumed.epochs_done == 4 and resumed.iterations == straight.iterations == 4
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical: every CPU kernel used here is deterministic
    ca = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")
    cb = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert ca["scheduler"] == cb["scheduler"]
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # identical per-epoch history (losses, LRs, validation), the resumed csv has no duplicate rows
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in resumed.history]
    rows = (resumed.run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[1].startswith("1,1,")
    assert cb["task"]["kind"] == "brats-regions" and cb["config"]["train"]["epochs"] == 4
    assert cb["epoch"] == 4 and cb["iteration"] == 4 and isinstance(cb["rng"]["torch"], torch.Tensor)


_CRASH_SCRIPT = """
import io, os, signal, sys
import torch
sys.path.insert(0, {tests!r})  # a separate interpreter: tests/ holds the helpers package
from helpers.tiny import tiny_config, tiny_volumes
# the second torch.save of this process writes half of the file, then the process is SIGKILLed
_save, _calls = torch.save, [0]
def _killing_save(obj, f, *a, **k):
    _calls[0] += 1
    if _calls[0] == 2:
        buf = io.BytesIO()
        _save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *a, **k)
torch.save = _killing_save
from attnseg.train.trainer import run_training
resume = sys.argv[1] == "resume"
cfg = tiny_config({out!r}, "crash", train__epochs=3)
run_training(cfg, resume=resume, volumes=(tiny_volumes(3, 0), tiny_volumes(1, 1)))
"""


def test_sigkill_while_writing_checkpoint_keeps_previous_and_resume_continues(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_SCRIPT.format(tests=str(HERE.parent), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # save #1 = last.pt after epoch 1; save #2 (epoch 2) is killed half-way through the write
    proc = subprocess.run([sys.executable, str(script), "fresh"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckdir = tmp_path / "crash" / "checkpoints"
    leftovers = [p.name for p in ckdir.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written temporary file
    ck = load_checkpoint(ckdir / "last.pt")  # the previous checkpoint is intact and loadable
    assert ck["epoch"] == 1
    # resume in this process (same thread count as the subprocess: see conftest.py)
    res = run_training(tiny_config(tmp_path, "crash", train__epochs=3), resume=True,
                       volumes=(tiny_volumes(3, 0), tiny_volumes(1, 1)))
    assert "resumed from epoch 1" in (res.run_dir / "log.txt").read_text()
    ck = load_checkpoint(ckdir / "last.pt")
    assert ck["epoch"] == 3 and ck["iteration"] == 3
    assert not [p for p in ckdir.iterdir() if p.name.endswith(".tmp")]  # stale temp file removed
    # and the result is the uninterrupted run's (same thread count as the subprocesses)
    ref = run_training(tiny_config(tmp_path, "ref", train__epochs=3),
                       volumes=(tiny_volumes(3, 0), tiny_volumes(1, 1)))
    for k, v in _weights(ref.run_dir).items():
        assert torch.equal(v, ck["model"][k]), k
