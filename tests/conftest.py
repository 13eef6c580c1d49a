"""Shared fixtures: deterministic seeds, real image files written in temporary folders, the reference data (vendored
in tests/data/reference, see its README), a free port for process groups."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import tempfile

os.environ.setdefault("ROBUSTSIG_PROGRESS", "0")
# The suite never touches the network nor the user's caches: zero-shot heads and Broden matrices built by
# tests go to a throw-away folder, and every hub library is told it is offline.
os.environ["ROBUSTSIG_CACHE"] = tempfile.mkdtemp(prefix="robustsig-test-cache-")
for _offline in ("ROBUSTSIG_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_offline, "1")
REFERENCE = Path(__file__).resolve().parent / "data" / "reference"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module. Bit-for-bit comparisons need equal thread counts (reductions
    are split by thread), and torchrun workers and test subprocesses run one thread each; on a busy 2-core machine
    one thread is also the fast choice for small tensors. Module-scoped, so the module's other module-scoped
    fixtures run on one thread too: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def reference_dir() -> Path:
    """``tests/data/reference``: published tables and class maps, part of the repository (never skipped)."""
    assert REFERENCE.is_dir(), f"{REFERENCE} is missing: it is part of the repository (tests/data/README.md)"
    return REFERENCE


@pytest.fixture
def free_port() -> int:
    """A TCP port nobody listens on now, for a process group's ``MASTER_PORT``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
