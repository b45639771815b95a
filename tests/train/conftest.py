import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models run fastest (and identically) on one thread, especially on a shared CPU;
    subprocesses started by these tests get OMP_NUM_THREADS=1 as well (root conftest's ``one_thread``)."""


@pytest.fixture(autouse=True)
def _device_pinned(monkeypatch):
    """A training test must name its device: on ``auto`` it would train on the GPU of a CI host
    with one (and put DDP rank 1 on a second GPU that may not exist)."""
    from attnseg.train import distributed, trainer

    real = distributed.pick_device

    def pinned(spec, env=None, cuda_count=None):
        if spec == "auto" and cuda_count is None:
            raise AssertionError("this test leaves the training device on 'auto'; set device: cpu")
        return real(spec, env, cuda_count)

    monkeypatch.setattr(distributed, "pick_device", pinned)
    monkeypatch.setattr(trainer, "pick_device", pinned)
