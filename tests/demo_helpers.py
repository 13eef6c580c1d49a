"""A demo data folder built once per test session (the ``small`` size), shared by the demo tests:
``from demo_helpers import small_demo``."""

from __future__ import annotations

import pytest

from robustsig.demo import build_demo_data


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    return build_demo_data(tmp_path_factory.mktemp("demo") / "data", size="small")
