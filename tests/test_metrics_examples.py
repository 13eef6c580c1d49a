"""The runnable examples in the metrics docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["kurtosis", "directions", "pruning", "robustness", "scoring", "table", "concepts", "cka", "significance",
           "labelfree", "erpredict"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"robustsig.metrics.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
