"""Activation kurtosis (eq. 2) against scipy, its streaming twin, and outlier dimensions on planted outliers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import robustsig as rs
from robustsig.metrics.kurtosis import KurtosisAccumulator


def test_kurtosis_equals_scipy_pearson_per_row():
    rng = np.random.default_rng(1)
    h = np.concatenate([rng.standard_t(df=5, size=(300, 40)), rng.exponential(size=(200, 40))])
    expected = scipy.stats.kurtosis(h, axis=1, fisher=False).mean()
    assert abs(rs.activation_kurtosis(h) - expected) < 1e-12
    assert abs(rs.activation_kurtosis(torch.tensor(h, dtype=torch.float32)) - expected) < 1e-5


def test_gaussian_activations_give_three():
    h = torch.randn(4000, 256, dtype=torch.float64)
    assert abs(rs.activation_kurtosis(h) - 3.0) < 0.05


def test_accumulator_equals_one_shot_and_memory_map(tmp_path):
    h = np.random.default_rng(2).laplace(size=(1000, 32))
    acc = KurtosisAccumulator()
    for batch in np.array_split(h, 7):
        acc.update(batch)
    one_shot = rs.activation_kurtosis(h)
    assert acc.compute() == pytest.approx(one_shot, rel=1e-13)
    np.save(tmp_path / "h.npy", h)
    mapped = np.load(tmp_path / "h.npy", mmap_mode="r")
    assert rs.activation_kurtosis(mapped, chunk_rows=64) == pytest.approx(one_shot, rel=1e-13)


def test_outlier_dimension_found_and_raises_kurtosis():
    h = torch.randn(2000, 128, dtype=torch.float64)
    h[:, [17, 90]] *= 30.0
    found = rs.outlier_dimensions(h)
    assert sorted(found.indices.tolist()) == [17, 90]
    assert bool((found.scores > 20).all())
    assert rs.activation_kurtosis(h) > 30
    assert rs.outlier_dimensions(torch.randn(2000, 128)).indices.numel() == 0


def test_constant_rows_are_left_out_with_a_warning():
    h = torch.randn(100, 16, dtype=torch.float64)
    expected = rs.activation_kurtosis(h)
    with pytest.warns(RuntimeWarning, match="constant"):
        value = rs.activation_kurtosis(torch.cat([h, torch.full((5, 16), 2.0, dtype=torch.float64)]))
    assert value == pytest.approx(expected, rel=1e-13)


def test_bad_input_is_named():
    with pytest.raises(rs.InputError, match="2-D"):
        rs.activation_kurtosis(torch.randn(10))
    with pytest.raises(rs.InputError, match="NaN"):
        rs.activation_kurtosis(torch.tensor([[1.0, float("nan"), 2.0]]))
    acc = KurtosisAccumulator()
    acc.update(torch.randn(4, 8))
    with pytest.raises(rs.InputError, match="8 columns"):
        acc.update(torch.randn(4, 9))
