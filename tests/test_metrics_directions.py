"""Head SVD, direction importance (eq. 4), its streaming twin, Spearman and privileged directions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import robustsig as rs


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q


def test_head_svd_matches_numpy_and_reconstructs():
    W = np.random.default_rng(3).normal(size=(30, 50))
    s, U, V = rs.head_svd(W)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(W, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose((U @ torch.diag(s) @ V.T).numpy(), W, atol=1e-12)
    assert bool((s[:-1] >= s[1:]).all())
    np.testing.assert_allclose((V.T @ V).numpy(), np.eye(30), atol=1e-12)
    # sign convention: the largest-magnitude entry of each right singular vector is positive
    assert bool((V.gather(0, V.abs().argmax(0, keepdim=True)) > 0).all())
    wide = rs.head_svd(torch.randn(60, 20))
    assert wide.rank == 20 and wide.U.shape == (60, 20) and wide.V.shape == (20, 20)


def test_importance_matches_definition_and_streams():
    W = torch.randn(12, 40, dtype=torch.float64)
    h = torch.randn(700, 40, dtype=torch.float64) + 0.5
    s, _, V = rs.head_svd(W)
    cos = (h @ V) / h.norm(dim=1, keepdim=True)
    expected = s / s.sum() * cos.abs().mean(0)
    imp = rs.direction_importance(W, h)
    torch.testing.assert_close(imp, expected, rtol=1e-12, atol=0)
    acc = rs.ImportanceAccumulator(W)
    for batch in h.split(97):
        acc.update(batch)
    torch.testing.assert_close(acc.compute(), imp, rtol=1e-12, atol=0)
    torch.testing.assert_close(rs.direction_importance(W, h.numpy(), chunk_rows=50), imp, rtol=1e-12, atol=0)
    f32 = rs.direction_importance(W.float(), h.float())
    torch.testing.assert_close(f32, imp, rtol=1e-5, atol=0)


def test_importance_spearman_equals_scipy():
    a, b = np.random.default_rng(4).normal(size=(2, 50))
    b[:10] = b[0]  # ties
    assert rs.importance_spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(rs.importance_spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))


def test_planted_outlier_feature_is_the_top_privileged_direction():
    d, classes, k, neuron = 64, 20, 11, 5
    V = orthonormal(d, classes, seed=1)
    # make direction k the neuron axis `neuron`: an outlier feature along one right singular vector
    basis = torch.cat([torch.eye(d, dtype=torch.float64)[:, [neuron]], V], dim=1)
    q, _ = torch.linalg.qr(basis)
    q[:, 0] *= torch.sign(q[neuron, 0])
    V = torch.cat([q[:, 1:k + 1], q[:, :1], q[:, k + 1:classes]], dim=1)
    s = torch.linspace(3.0, 1.0, classes, dtype=torch.float64)
    W = orthonormal(classes, classes, seed=2) @ torch.diag(s) @ V.T
    h = torch.randn(3000, d, dtype=torch.float64)
    h[:, neuron] += 40.0 * torch.sign(torch.randn(3000, dtype=torch.float64))
    svd = rs.head_svd(W)
    assert abs(float(svd.V[:, k] @ torch.eye(d, dtype=torch.float64)[:, neuron])) == pytest.approx(1.0, abs=1e-9)
    importance = rs.direction_importance(svd, h)
    privileged = rs.privileged_directions(importance)
    assert privileged.indices.tolist() == [k]
    assert float(privileged.ratios[0]) > 10
    assert rs.activation_kurtosis(h) > 20
    assert rs.outlier_dimensions(h).indices.tolist() == [neuron]


def test_no_privileged_direction_for_random_head_on_gaussian_activations():
    svd = rs.head_svd(torch.randn(100, 100))
    importance = rs.direction_importance(svd, torch.randn(2000, 100))
    result = rs.privileged_directions(importance)
    assert result.indices.numel() == 0
    assert float((importance / importance.mean()).max()) < 3.0
    # isotropic activations: every direction sees the same mean |cos|, so importance follows s
    assert rs.importance_spearman(svd.s, importance) > 0.95


def test_privileged_directions_definition():
    result = rs.privileged_directions([1.0, 1.0, 30.0, 1.0, 12.0, 1.0, 1.0, 1.0, 1.0, 1.0], factor=2.0)
    assert result.indices.tolist() == [2, 4]
    np.testing.assert_allclose(result.ratios.numpy(), [30 / 5.0, 12 / 5.0])
    with pytest.raises(rs.InputError, match="non-negative"):
        rs.privileged_directions([0.5, -0.1])


def test_zero_activation_rows_and_shape_errors():
    W = torch.randn(5, 8, dtype=torch.float64)
    h = torch.randn(50, 8, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="zero"):
        with_zero = rs.direction_importance(W, torch.cat([h, torch.zeros(3, 8, dtype=torch.float64)]))
    torch.testing.assert_close(with_zero, rs.direction_importance(W, h))
    with pytest.raises(rs.InputError, match="8 columns"):
        rs.direction_importance(W, torch.randn(10, 9))
