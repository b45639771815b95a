"""Fixtures shared by the whole suite; shared helper code lives in the ``helpers`` package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.threads import torch_threads


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test (tiny tensors; see :func:`helpers.threads.torch_threads`).

    A folder applies it to all its tests with an autouse fixture in its conftest that requests
    it; a module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    with torch_threads(1):
        yield
