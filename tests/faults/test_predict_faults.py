"""Faults during ``attnseg predict``: SIGKILL between and during case writes, a full disk, out of
memory in the network; each is injected in a subprocess running the CLI, then ``--resume``
must redo exactly the unfinished cases and give the uninterrupted run's labels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from attnseg.cli.main import main
from helpers.faults import PRELUDE, labels, make_checkpoint, run_script, write_cases


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Checkpoint, four cases and the uninterrupted prediction (labels + probabilities)."""
    tmp = tmp_path_factory.mktemp("predict_faults")
    ckpt = make_checkpoint(tmp / "model.pt")
    ids = write_cases(tmp / "data", 4)
    ref = tmp / "ref"
    assert main(["predict", "-c", str(ckpt), "-i", str(tmp / "data"), "-o", str(ref), "--save-probs"]) == 0
    return ckpt, tmp / "data", ids, ref


def _assert_equal_to_reference(out: Path, ref: Path, ids: list[str]) -> None:
    for cid in ids:
        assert np.array_equal(labels(out / f"{cid}.nii.gz"), labels(ref / f"{cid}.nii.gz")), cid
        assert np.array_equal(labels(out / f"{cid}_probs.nii.gz"), labels(ref / f"{cid}_probs.nii.gz")), cid


def _finals(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


_KILL = PRELUDE + """
# SIGKILL after the N-th completed save_image (between writes), or in the middle of the
# N-th nibabel write (a half-written temporary file), then the CLI command in argv[3:]
import nibabel, attnseg.data.io as io
mode, n = sys.argv[1], int(sys.argv[2])
calls = {"save_image": 0, "nibabel": 0}
_save_image, _nib_save = io.save_image, nibabel.save
def save_image(*a, **k):
    out = _save_image(*a, **k)
    calls["save_image"] += 1
    if mode == "between" and calls["save_image"] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
def nib_save(img, filename, *a, **k):
    calls["nibabel"] += 1
    _nib_save(img, filename, *a, **k)
    if mode == "during" and calls["nibabel"] == n:
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
io.save_image, nibabel.save = save_image, nib_save
sys.exit(main(sys.argv[3:]))
"""


def test_predict_sigkill_between_and_during_writes_then_resume(setup, tmp_path, capsys):
    ckpt, data, ids, ref = setup
    out = tmp_path / "pred"
    cmd = ["predict", "-c", str(ckpt), "-i", str(data), "-o", str(out), "--save-probs"]
    # 1) killed right after case 0's labels were renamed into place (its probabilities not yet written)
    p = run_script(_KILL, "between", "1", *cmd)
    assert p.returncode == -9, p.stderr[-2000:]
    assert _finals(out) == ["Case_000.nii.gz"]
    assert (out / ".attnseg.lock").exists()  # left by the killed process
    # 2) --resume, killed half-way through writing case 2's labels (5th NIfTI write)
    p = run_script(_KILL, "during", "5", *cmd, "--resume")
    assert p.returncode == -9, p.stderr[-2000:]
    assert "took over the stale lock" in p.stderr
    # cases 0 and 1 complete; case 2 only as a half-written temporary file, never under its name
    assert _finals(out) == ["Case_000.nii.gz", "Case_000_probs.nii.gz", "Case_001.nii.gz", "Case_001_probs.nii.gz"]
    temps = [q.name for q in out.iterdir() if q.name.startswith(".tmp_")]
    assert len(temps) == 1 and temps[0].endswith(".nii.gz")
    done = {q: q.stat().st_mtime_ns for q in out.glob("Case_00[01]*.nii.gz")}
    # 3) --resume to the end: exactly cases 2 and 3 are predicted
    capsys.readouterr()
    assert main(cmd + ["--resume"]) == 0
    err = capsys.readouterr()
    assert "Case_000: exists, skipped (--resume)" in err.err and "Case_001: exists, skipped (--resume)" in err.err
    assert "Case_002: wrote" in err.err and "Case_003: wrote" in err.err
    assert "removed 1 partial file(s)" in err.err and temps[0] in err.err
    assert "predicted 2 case(s), skipped 2, failed 0" in err.out
    assert all(q.stat().st_mtime_ns == t for q, t in done.items())  # finished cases untouched
    assert not [q for q in out.iterdir() if q.name.startswith(".")]  # no temp file, no lock left
    _assert_equal_to_reference(out, ref, ids)


_DISK = PRELUDE + """
# the file-size limit (ulimit -f) stands in for a full disk: writes past it fail with EFBIG
import resource
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def test_predict_disk_full_stops_with_one_line_then_resume(setup, tmp_path, capsys):
    ckpt, data, ids, ref = setup
    out = tmp_path / "pred"
    cmd = ["predict", "-c", str(ckpt), "-i", str(data), "-o", str(out), "--save-probs"]
    label_size = (ref / "Case_000.nii.gz").stat().st_size
    probs_size = (ref / "Case_000_probs.nii.gz").stat().st_size
    assert probs_size > 2 * label_size
    limit = (label_size + probs_size) // 2  # the labels fit, the probabilities do not
    p = run_script(_DISK, str(limit), *cmd)
    assert p.returncode == 1, p.stderr[-2000:]
    err = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert len(err) == 1 and "Traceback" not in p.stderr
    line = err[0]
    assert f"{out / 'Case_000_probs.nii.gz'}: no space to write the prediction" in line
    assert "file-size limit" in line and "needs about" in line and "MiB" in line
    # the labels of case 0 are complete, its probabilities and later cases absent, no partial file
    assert _finals(out) == ["Case_000.nii.gz"]
    assert not [q for q in out.iterdir() if q.name.startswith(".")]
    assert np.array_equal(labels(out / "Case_000.nii.gz"), labels(ref / "Case_000.nii.gz"))
    # space is back: --resume redoes case 0 (its probabilities were missing) and the rest
    capsys.readouterr()
    assert main(cmd + ["--resume"]) == 0
    assert "predicted 4 case(s), skipped 0, failed 0" in capsys.readouterr().out
    _assert_equal_to_reference(out, ref, ids)


_OOM = PRELUDE + """
# the network's forward raises the CPU allocator's out-of-memory error for the second case
import attnseg.infer.predict as P
from attnseg.models.unet import UNet
case = [0]
_logits, _forward = P.Predictor.logits, UNet.forward
def logits(self, image):
    case[0] += 1
    return _logits(self, image)
def forward(self, x):
    if case[0] == 2:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 8796093022208 bytes.")
    return _forward(self, x)
P.Predictor.logits, UNet.forward = logits, forward
sys.exit(main(sys.argv[1:]))
"""


def test_predict_out_of_memory_names_settings_and_goes_on(setup, tmp_path, capsys):
    ckpt, data, ids, ref = setup
    out = tmp_path / "pred"
    cmd = ["predict", "-c", str(ckpt), "-i", str(data), "-o", str(out), "--save-probs", "--sw-batch", "4",
           "--roi", "16", "--tta"]
    p = run_script(_OOM, *cmd)
    assert p.returncode == 1, p.stderr[-2000:]
    # the other cases went on
    assert _finals(out) == sorted(f"{c}{s}.nii.gz" for c in ("Case_000", "Case_002", "Case_003")
                                  for s in ("", "_probs"))
    line = next(ln for ln in p.stdout.splitlines() if "failed: Case_001" in ln)
    assert "Case_001: sliding-window inference: out of memory" in line
    # 8 TiB requested + what the process holds, against what this machine has
    assert re.search(r"estimated need 819\d\.\d\d GiB exceeds the [\d.]+ GiB usable by [\d.]+ GiB", line), line
    assert "lower --sw-batch 4 -> 1 and --roi 16x16x16 -> 8x8x8, or leave out --tta" in line
    # --resume without the fault: only Case_001 is predicted (with --tta and sw batch 4 as before)
    capsys.readouterr()
    assert main(cmd + ["--resume"]) == 0
    text = capsys.readouterr()
    assert "predicted 1 case(s), skipped 3, failed 0" in text.out
    assert "Case_001: wrote" in text.err


def test_any_write_meeting_a_full_disk_ends_in_one_line(monkeypatch, capsys, tmp_path):
    # e.g. a log or metrics file: no traceback, the file named
    import errno

    import attnseg.cli.predict as cli_predict

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "log.txt"))

    monkeypatch.setattr(cli_predict, "run", full)
    assert main(["predict", "-c", "x.pt", "-i", "in", "-o", "out"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"attnseg predict: error: {tmp_path / 'log.txt'}: No space left on device (disk full, quota or ulimit -f); "
        f"free space, then rerun (train: with --resume)"]
