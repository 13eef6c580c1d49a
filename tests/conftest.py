"""Shared fixtures: deterministic seeds, real image files written in temporary folders, the reference data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("ROBUSTSIG_PROGRESS", "0")
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def reference_dir() -> Path:
    """``../shared/reference`` (published tables and class maps); the test is skipped where it is absent."""
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference is not present in this checkout")
    return REFERENCE
