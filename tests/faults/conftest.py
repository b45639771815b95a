import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models run fastest (and identically) on one thread (the root conftest's ``one_thread``);
    subprocesses get OMP_NUM_THREADS=1."""
