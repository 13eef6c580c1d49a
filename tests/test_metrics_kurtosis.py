"""Activation kurtosis (eq. 2) against scipy, its streaming twin, and outlier dimensions on planted outliers."""

from __future__ import annotations

from fractions import Fraction

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


# --- issue 19.7: catastrophic cancellation, as scipy.stats.kurtosis detects it --------------------------------
EPS = np.finfo(np.float64).eps


def exact_kurtosis(row) -> float:
    """Pearson kurtosis of the stored values in exact rational arithmetic (every float is a fraction)."""
    xs = [Fraction(float(v)) for v in row]
    mean = sum(xs) / len(xs)
    m2 = sum((x - mean) ** 2 for x in xs) / len(xs)
    m4 = sum((x - mean) ** 4 for x in xs) / len(xs)
    return float(m4 / m2**2)


def _undefined(compute) -> float:
    """``compute()``, which must warn that every vector is constant up to rounding (two warnings)."""
    with pytest.warns(RuntimeWarning) as record:
        value = compute()
    messages = " ".join(str(item.message) for item in record)
    assert "catastrophic cancellation" in messages and "undefined (NaN)" in messages
    return value


def test_cancellation_gives_nan_with_a_warning_as_scipy():
    """[1, 1 + eps, 1, 1, 1] gave 5.0 (the mean rounds to 1); its exact kurtosis is 3.25, but its spread is below
    one rounding unit of its mean, where scipy warns and returns NaN."""
    row = np.array([[1.0, 1.0 + EPS, 1.0, 1.0, 1.0]])
    assert exact_kurtosis(row[0]) == 3.25
    with pytest.warns(RuntimeWarning, match="Precision loss"):
        assert np.isnan(scipy.stats.kurtosis(row[0], fisher=False))
    assert np.isnan(_undefined(lambda: rs.activation_kurtosis(row)))
    acc = KurtosisAccumulator()
    acc.update(row)
    assert np.isnan(_undefined(acc.compute))
    row32 = np.array([[1.0, 1.0 + np.finfo(np.float32).eps, 1.0, 1.0, 1.0]], dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="Precision loss"):
        assert np.isnan(scipy.stats.kurtosis(row32[0], fisher=False))     # the input's own rounding unit
    assert np.isnan(_undefined(lambda: rs.activation_kurtosis(row32)))


def test_mixed_rows_equal_scipy_nanmean_streamed_or_not():
    """Rows scipy calls NaN are left out of the mean; the others are scipy's values (streaming = one shot)."""
    rng = np.random.default_rng(3)
    h = rng.laplace(size=(40, 5))
    h[4] = [1.0, 1.0 + EPS, 1.0, 1.0, 1.0]                                  # cancellation: NaN in scipy
    h[9] = 7.5                                                              # constant: NaN in scipy
    h[20] = [-2.0, -2.0, -2.0 + 4 * EPS, -2.0, -2.0]                        # cancellation, a negative mean
    with pytest.warns(RuntimeWarning):
        per_row = scipy.stats.kurtosis(h, axis=1, fisher=False)
    assert np.isnan(per_row[[4, 9, 20]]).all() and np.isfinite(np.delete(per_row, [4, 9, 20])).all()
    with pytest.warns(RuntimeWarning, match="3 activation vector"):
        assert rs.activation_kurtosis(h) == pytest.approx(np.nanmean(per_row), rel=1e-13)
    acc = KurtosisAccumulator()
    for rows in np.array_split(np.arange(40), 6):
        acc.update(h[rows])
    with pytest.warns(RuntimeWarning, match="3 activation vector"):
        assert acc.compute() == pytest.approx(np.nanmean(per_row), rel=1e-13)


@pytest.mark.parametrize("row", [1e8 + np.array([0.0, 1.0, 0.0, 0.0, 0.0]),
                                 1e8 + np.array([0.3, 1.7, 0.0, 0.1, 5.0]),
                                 1.0 + EPS * np.array([0.0, 100.0, 0.0, 0.0, 37.0]),
                                 3e15 + np.array([0.0, 1.0, 2.0, 0.0, 8.0]),
                                 1e-100 * np.array([0.0, 1.0, 2.0, 0.0, 8.0]),
                                 1e90 * np.array([0.0, 1.0, 2.0, 0.0, 8.0])])
def test_large_means_and_extreme_scales_are_exact(row):
    """Where the spread is above rounding, the value is the stored values' exact kurtosis (scipy's one pass is
    1.4e-8 off on the first row, 17 % on the fourth; fourth powers of 1e-100 underflowed to NaN before)."""
    assert rs.activation_kurtosis(row[None]) == pytest.approx(exact_kurtosis(row), rel=1e-14)
