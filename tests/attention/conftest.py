"""The attention tests use tiny tensors: one intra-op thread is faster (no fork/join per op)
and keeps them fast when several test workers share the cores. Restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
