"""GPU-readiness of the commands: ``attnseg ablate --devices`` scheduling and the precision and
device ``attnseg demo`` hands to the predictor after training."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from attnseg.experiments.ablate import run_on_devices

DURATIONS = [0.4, 0.05, 0.05, 0.05, 0.05]  # one slow cell first, then four quick ones


class _Recorder:
    """A fake cell runner recording (device, start, end) per job and the peak jobs per device."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.ran: dict[int, str] = {}

    def run(self, job: int, device: str) -> int:
        with self.lock:
            self.active[device] = self.active.get(device, 0) + 1
            self.peak[device] = max(self.peak.get(device, 0), self.active[device])
            self.ran[job] = device
        time.sleep(DURATIONS[job])
        with self.lock:
            self.active[device] -= 1
        return job


def test_round_robin_assignment_stacks_two_cells_on_one_gpu():
    # the old scheduler: job i pinned to devices[i % n] up front, any free worker runs it
    rec = _Recorder()
    devices = ["cuda:0", "cuda:1"]
    with ThreadPoolExecutor(len(devices)) as pool:
        futures = [pool.submit(rec.run, j, devices[j % 2]) for j in range(len(DURATIONS))]
        for f in futures:
            f.result()
    assert rec.peak["cuda:0"] == 2  # job 2 joined the slow job 0 on cuda:0 while cuda:1 went idle


def test_run_on_devices_keeps_one_cell_per_device_and_no_device_idles():
    rec = _Recorder()
    devices = ["cuda:0", "cuda:1"]
    finished = []
    with ThreadPoolExecutor(len(devices)) as pool:
        run_on_devices(range(len(DURATIONS)), devices, lambda j, d: pool.submit(rec.run, j, d), finished.append)
    assert rec.peak == {"cuda:0": 1, "cuda:1": 1}
    assert sorted(finished) == list(range(len(DURATIONS)))
    # the slow cell kept cuda:0; the four quick ones all went to the free cuda:1
    assert rec.ran == {0: "cuda:0", 1: "cuda:1", 2: "cuda:1", 3: "cuda:1", 4: "cuda:1"}


def test_run_on_devices_reraises_the_first_failure_and_starts_nothing_after_it():
    started = []

    def run(job: int, device: str) -> None:
        started.append(job)
        if job == 1:
            raise RuntimeError("cell 1 failed")
        time.sleep(0.05)

    with ThreadPoolExecutor(2) as pool, pytest.raises(RuntimeError, match="cell 1 failed"):
        run_on_devices(range(6), ["a", "b"], lambda j, d: pool.submit(run, j, d))
    assert len(started) < 6


def test_a_device_named_twice_is_two_slots():
    rec = _Recorder()
    with ThreadPoolExecutor(2) as pool:
        run_on_devices(range(3), ["cpu", "cpu"], lambda j, d: pool.submit(rec.run, j, d))
    assert rec.peak == {"cpu": 2} and sorted(rec.ran) == [0, 1, 2]


def test_demo_predicts_on_the_training_device_with_a_precision_the_predictor_accepts():
    from attnseg.experiments.demo import predict_settings
    from attnseg.infer.sliding_window import SlidingWindowInferer

    for train_precision, expect in (("fp32", "fp32"), ("bf16", "bf16"), ("mixed", "bf16"), ("fp16", "fp32"),
                                    ("auto", "fp32")):
        device, precision = predict_settings({"device": "cpu", "train": {"precision": train_precision}})
        assert (device, precision) == ("cpu", expect), train_precision
        SlidingWindowInferer(8, precision=precision)  # accepted (the demo used to pass "mixed" through)


@pytest.mark.slow
def test_demo_cli_with_mixed_precision_trains_and_predicts(tmp_path, capsys):
    """The user's command: ``attnseg demo --set train.precision=mixed`` (bf16 on a CPU) used to
    train and then fail in the predictor ("precision must be 'fp32' or 'bf16', got 'mixed'")."""
    from attnseg.cli.main import main

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--train-cases", "2", "--test-cases", "1"]
    for s in ("device=cpu", "train.precision=mixed", "train.epochs=1", "train.iterations_per_epoch=1",
              "train.schedule.warmup_epochs=0", "train.schedule.flat_epochs=1", "validation.interval=1",
              "data.patch_size=[32,32,32]", "validation.roi_size=[32,32,32]", "data.batch_size=1",
              "model.kwargs.channels=[4,4,4,4,4]", "log.tensorboard=false"):
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    run = out / "runs" / "panet-seed0"
    assert (run / "predictions" / "BraTS20_Synth_003.nii.gz").is_file()
    assert (run / "eval" / "per_case.csv").is_file()
