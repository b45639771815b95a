"""Two processes on one run folder or one prediction folder: the second is refused with the
pid and host of the first; a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from attnseg.cli.main import main
from attnseg.train.checkpoint import load_checkpoint
from helpers.faults import PRELUDE, make_checkpoint, train_config, write_brats, write_cases, write_plugin


def _start(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 150) -> None:
    t0 = time.time()
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"first process ended early: {proc.communicate()[1][-3000:]}")
        assert time.time() - t0 < timeout, "first process did not start"
        time.sleep(0.05)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_training_on_the_same_run_folder_is_refused(tmp_path, capsys):
    data = write_brats(tmp_path / "data", 3)
    plugins = write_plugin(tmp_path / "plugins")
    cfg = train_config(tmp_path, "run", data, plugin=True, train__epochs=2)
    sync = tmp_path / "sync"
    sync.mkdir()
    # the first run blocks in its first training step until "go" exists
    first = _start(PRELUDE + "sys.exit(main(sys.argv[1:]))", "train", "--config", str(cfg),
                   env={"PYTHONPATH": str(plugins), "FAULTPLUG": f"block:{sync}"})
    try:
        _wait_for(sync / "started", first)
        run = tmp_path / "runs" / "run"
        before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
        sys.path.insert(0, str(plugins))
        try:
            assert main(["train", "--config", str(cfg)]) == 1
        finally:
            sys.path.remove(str(plugins))
        line = next(ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln)
        assert f"{run}: in use by pid {first.pid} on host {socket.gethostname()} (training since " in line
        assert f"lock file {run / '.attnseg.lock'}" in line
        assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # the second wrote nothing
    finally:
        (sync / "go").write_text("")
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert load_checkpoint(tmp_path / "runs" / "run" / "checkpoints" / "last.pt")["epoch"] == 2
    assert not (tmp_path / "runs" / "run" / ".attnseg.lock").exists()  # released at the end


def test_stale_training_lock_of_a_dead_process_is_taken_over(tmp_path):
    data = write_brats(tmp_path / "data", 3)
    cfg = train_config(tmp_path, "run", data, train__epochs=2)
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    pid = _dead_pid()
    (run / ".attnseg.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "purpose": "training",
                                                   "since": "2026-01-01 00:00:00 UTC"}))
    assert main(["train", "--config", str(cfg)]) == 0
    log = (run / "log.txt").read_text()
    assert f"took over the stale lock {run / '.attnseg.lock'} of pid {pid} on host {socket.gethostname()}" in log
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert not (run / ".attnseg.lock").exists()


_BLOCK_PREDICT = PRELUDE + """
# the first case waits until argv[1]/go exists
from pathlib import Path
import time
import attnseg.infer.predict as P
sync = Path(sys.argv[1])
_logits = P.Predictor.logits
def logits(self, image):
    (sync / "started").write_text("")
    while not (sync / "go").exists():
        time.sleep(0.05)
    return _logits(self, image)
P.Predictor.logits = logits
sys.exit(main(sys.argv[2:]))
"""


def test_second_prediction_into_the_same_folder_is_refused(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt")
    write_cases(tmp_path / "data", 2)
    out = tmp_path / "pred"
    sync = tmp_path / "sync"
    sync.mkdir()
    cmd = ["predict", "-c", str(ckpt), "-i", str(tmp_path / "data"), "-o", str(out)]
    first = _start(_BLOCK_PREDICT, str(sync), *cmd)
    try:
        _wait_for(sync / "started", first)
        assert main(cmd + ["--resume"]) == 1
        line = next(ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln)
        assert f"{out}: in use by pid {first.pid} on host {socket.gethostname()} (prediction since " in line
    finally:
        (sync / "go").write_text("")
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["Case_000.nii.gz", "Case_001.nii.gz"]
