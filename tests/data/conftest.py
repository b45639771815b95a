"""Fixtures of the data tests: small datasets from :mod:`helpers.nifti`."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.nifti import make_brats


@pytest.fixture
def brats2020(tmp_path: Path) -> Path:
    return make_brats(tmp_path / "brats2020", 3, "2020")


@pytest.fixture
def brats2023(tmp_path: Path) -> Path:
    return make_brats(tmp_path / "brats2023", 2, "2023")
