"""Thread settings for tests on tiny tensors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, restoring the previous count afterwards.

    Tiny tensors gain nothing from more threads: OpenMP fork/join dominates, and on a CPU shared
    by several test workers the spinning threads make tests several times slower.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
