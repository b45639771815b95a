"""Faults during ``attnseg train``: a full disk while writing a checkpoint, NaN/Inf losses
(fp32 and bf16 autocast), out of memory in validation, a killed DataLoader worker. Each is
injected through the CLI (a plugin model given by ``model.imports``, or a subprocess), and
each ends in one message and a run folder that ``--resume`` continues from."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch

from attnseg.cli.main import main
from attnseg.train.checkpoint import load_checkpoint
from helpers.faults import PRELUDE, run_script, train_config, weights, write_brats, write_plugin


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_brats(tmp_path_factory.mktemp("brats"), 3)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """faultplug importable here and in subprocesses; FAULTPLUG set per test."""
    folder = write_plugin(tmp_path / "plugins")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    return folder


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


_DISK = PRELUDE + """
import resource
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing us
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def test_train_disk_full_during_checkpoint_keeps_previous_and_resumes(tmp_path, data, capsys):
    cfg = train_config(tmp_path, "run", data, train__epochs=3)
    run = tmp_path / "runs" / "run"
    assert main(["train", "--config", str(cfg), "--set", "train.stop_after_epochs=1"]) == 0
    ck = run / "checkpoints" / "last.pt"
    size = ck.stat().st_size
    # epoch 2's checkpoint does not fit under the file-size limit (ulimit -f)
    p = run_script(_DISK, str(size // 2), "train", "--config", str(cfg), "--resume")
    assert p.returncode == 1, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("attnseg train: error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert f"{ck}: no space to write the checkpoint (the file-size limit, ulimit -f, was reached): " \
           f"it needs about" in errors[0] and "MiB free" in errors[0]
    assert load_checkpoint(ck)["epoch"] == 1 and ck.stat().st_size == size  # previous checkpoint intact
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # no temporary file
    # space is back: --resume finishes, with the weights of an uninterrupted run
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    assert load_checkpoint(ck)["epoch"] == 3
    ref_cfg = train_config(tmp_path, "ref", data, train__epochs=3)
    assert main(["train", "--config", str(ref_cfg)]) == 0
    ref = weights(tmp_path / "runs" / "ref")
    got = weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_train_nan_loss_steps_are_skipped_and_counted(tmp_path, data, plugin, monkeypatch, capsys):
    monkeypatch.setenv("FAULTPLUG", "nan:3")
    cfg = train_config(tmp_path, "nan", data, plugin=True, train__epochs=2, train__iterations_per_epoch=2)
    assert main(["train", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "nan"
    rows = _rows(run)
    # the 3rd step = epoch 2's first; the column appears with the first skipped step
    assert [r["skipped_steps"] for r in rows] == ["", "1"]
    assert all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)  # means of the good steps
    log = (run / "log.txt").read_text()
    assert "epoch 2 iteration 3: non-finite loss, step skipped (1 in a row)" in log
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 2 and ck["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_nan_streak_stops_naming_epoch_iteration_and_last_good_checkpoint(tmp_path, data, plugin,
                                                                                  monkeypatch, capsys, precision):
    # the model's output turns NaN from the 4th step on (epoch 2, iteration 4); 3 in a row stop the run
    monkeypatch.setenv("FAULTPLUG", "nan:4+")
    cfg = train_config(tmp_path, "streak", data, plugin=True, train__epochs=4, train__iterations_per_epoch=2,
                       train__max_nonfinite_steps=3, train__precision=precision)
    assert main(["train", "--config", str(cfg)]) == 1
    run = tmp_path / "runs" / "streak"
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("attnseg train: error:"))
    assert ("training stopped: the loss was NaN/Inf for 3 consecutive steps (epoch 3, iteration 6; "
            "3 steps skipped in all); nothing was saved from this state; last good checkpoint: "
            f"{run / 'checkpoints' / 'last.pt'} (epoch 2)") in line
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 2 and ck["iteration"] == 4  # nothing written from the bad state
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    # the learning rate fixed (here: the fault gone), --resume continues from the last good checkpoint
    monkeypatch.setenv("FAULTPLUG", "")
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 4


def test_train_out_of_memory_in_validation_names_settings_and_training_goes_on(tmp_path, data, plugin,
                                                                               monkeypatch, capsys):
    monkeypatch.setenv("FAULTPLUG", "oom-eval")
    cfg = train_config(tmp_path, "oom", data, plugin=True, train__epochs=2, validation__interval=1,
                       validation__sw_batch_size=2)
    assert main(["train", "--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "oom"
    log = (run / "log.txt").read_text()
    assert log.count("validation skipped at this epoch: validation of case") == 2
    assert "out of memory; estimated need" in log
    assert "lower validation.sw_batch_size 2 -> 1 and validation.roi_size 16x16x16 -> 8x8x8" in log
    assert all("val_dice_mean" not in r or r["val_dice_mean"] == "" for r in _rows(run))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2  # training went on


_KILL_WORKER = PRELUDE + """
# the DataLoader worker SIGKILLs itself when asked for a sample of epoch 2 (as the OOM killer would)
import torch.utils.data
from attnseg.train import distributed
_get = distributed.EpochTagged.__getitem__
import time
def getitem(self, key):
    if torch.utils.data.get_worker_info() is not None and key[0] == 1:
        open(os.environ["KILLED_AT"], "w").write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    return _get(self, key)
distributed.EpochTagged.__getitem__ = getitem
sys.exit(main(sys.argv[1:]))
"""


def test_train_dataloader_worker_killed_is_an_error_not_a_hang_and_resumes(tmp_path, data, capsys):
    cfg = train_config(tmp_path, "wk", data, train__epochs=3, data__workers=1)
    run = tmp_path / "runs" / "wk"
    killed_at = tmp_path / "killed_at"
    p = run_script(_KILL_WORKER, "train", "--config", str(cfg), timeout=240, env={"KILLED_AT": str(killed_at)})
    assert p.returncode == 1, p.stderr[-3000:]
    # an error, not a hang: PyTorch checks its workers every 5 s (a hang would run into the timeout)
    assert time.time() - float(killed_at.read_text()) < 60
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("attnseg train: error:"))
    assert "data loading stopped at epoch 2, iteration 2: DataLoader worker (pid" in line
    assert "killed by signal: Killed" in line or "exited unexpectedly" in line
    assert f"resume with --resume from {run / 'checkpoints' / 'last.pt'} (epoch 1)" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    ref = train_config(tmp_path, "wk_ref", data, train__epochs=3, data__workers=1)
    assert main(["train", "--config", str(ref)]) == 0
    a, b = weights(tmp_path / "runs" / "wk_ref"), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
