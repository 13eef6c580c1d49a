"""CKA against the Gram-matrix definition (Kornblith et al.'s reference code), invariances, the unbiased
estimator, streaming, and MinibatchCKA's guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustsig as rs

from cka_oracle import torch_cka_compare


# --- the Gram-matrix definition, as in Kornblith et al.'s reference notebook (numpy, float64) -----------------
def gram_linear(x):
    return x @ x.T


def gram_rbf(x, threshold=1.0):
    dot = x @ x.T
    sq_norms = np.diag(dot)
    sq_distances = -2 * dot + sq_norms[:, None] + sq_norms[None, :]
    return np.exp(-sq_distances / (2 * threshold**2 * np.median(sq_distances)))


def center_gram(gram, unbiased=False):
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def cka_gram(gram_x, gram_y, unbiased=False):
    gram_x, gram_y = center_gram(gram_x, unbiased), center_gram(gram_y, unbiased)
    return gram_x.ravel() @ gram_y.ravel() / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


@pytest.fixture
def related():
    rng = np.random.default_rng(10)
    X = rng.normal(size=(300, 40)) + 5.0  # a large mean: centering must not cancel precision away
    Y = np.tanh(X[:, :25] @ rng.normal(size=(25, 30)) / 5) + 0.3 * rng.normal(size=(300, 30))
    return X, Y


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_equals_gram_definition(related, unbiased):
    X, Y = related
    expected = cka_gram(gram_linear(X), gram_linear(Y), unbiased)
    assert 0.2 < expected < 0.95
    assert rs.cka(X, Y, unbiased=unbiased) == pytest.approx(expected, abs=1e-10)
    assert rs.cka(X, Y, unbiased=unbiased, chunk_rows=37) == pytest.approx(expected, abs=1e-10)
    assert rs.cka(torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32),
                  unbiased=unbiased) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_equals_gram_definition(related, unbiased):
    X, Y = related
    for sigma in (0.5, 1.0):
        expected = cka_gram(gram_rbf(X, sigma), gram_rbf(Y, sigma), unbiased)
        assert rs.cka(X, Y, kernel="rbf", unbiased=unbiased, sigma=sigma) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_invariant_to_rotation_and_isotropic_scaling(related, kernel):
    X, Y = related
    Q, _ = np.linalg.qr(np.random.default_rng(11).normal(size=(40, 40)))
    assert rs.cka(X, X @ Q, kernel=kernel) == pytest.approx(1.0, abs=1e-10)
    assert rs.cka(X, 7.5 * X @ Q + 3.0, kernel=kernel) == pytest.approx(1.0, abs=1e-10)
    base = rs.cka(X, Y, kernel=kernel)
    assert rs.cka(0.01 * X, 40.0 * Y, kernel=kernel) == pytest.approx(base, abs=1e-10)
    assert rs.cka(X, np.random.default_rng(12).normal(size=Y.shape), kernel=kernel) < 0.2


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_accumulator_equals_one_shot(related, unbiased):
    X, Y = related
    acc = rs.LinearCKA(unbiased)
    for rows in np.array_split(np.arange(300), 7):
        acc.update(X[rows], Y[rows])
    assert acc.compute() == pytest.approx(rs.cka(X, Y, unbiased=unbiased), abs=1e-12)
    with pytest.raises(rs.InputError, match="40 columns"):
        acc.update(Y[:5], Y[:5])


def test_memory_mapped_inputs_stream(related, tmp_path):
    X, Y = related
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y.astype(np.float32))
    mapped = rs.cka(np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r"),
                    chunk_rows=64)
    assert mapped == pytest.approx(rs.cka(X, Y.astype(np.float32)), abs=1e-6)


def test_minibatch_with_one_batch_is_the_unbiased_estimator(related):
    X, Y = related
    for kernel in ("linear", "rbf"):
        mb = rs.MinibatchCKA(kernel=kernel)
        mb.update(X, Y)
        assert mb.compute() == pytest.approx(rs.cka(X, Y, kernel=kernel, unbiased=True), abs=1e-10)


def test_unbiased_values_are_unclipped_near_independence():
    """The unbiased HSIC is legitimately negative for unrelated representations: the value is the Gram definition's,
    not 0 (every estimator clipped to [0, 1] before)."""
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    expected = cka_gram(gram_linear(X), gram_linear(Y), unbiased=True)
    assert expected < -0.03
    assert rs.cka(X, Y, unbiased=True) == pytest.approx(expected, abs=1e-12)
    streamed = rs.LinearCKA(unbiased=True)
    for rows in np.array_split(np.arange(40), 3):
        streamed.update(X[rows], Y[rows])
    assert streamed.compute() == pytest.approx(expected, abs=1e-12)
    mb = rs.MinibatchCKA()
    mb.update(X, Y)
    assert mb.compute() == pytest.approx(expected, abs=1e-12)
    rbf = cka_gram(gram_rbf(X), gram_rbf(Y), unbiased=True)
    assert rbf < 0 and rs.cka(X, Y, kernel="rbf", unbiased=True) == pytest.approx(rbf, abs=1e-12)
    values = []
    for seed in range(30):                     # tiny batches: the sum of per-batch HSIC (torch_cka's), unclipped
        batch_rng = np.random.default_rng(seed)
        batches = [(batch_rng.normal(size=(5, 3)), batch_rng.normal(size=(5, 2))) for _ in range(2)]
        mb = rs.MinibatchCKA()
        for x, y in batches:
            mb.update(x, y)
        oracle = torch_cka_compare([[torch.tensor(x)] for x, _ in batches], [[torch.tensor(y)] for _, y in batches])
        assert mb.compute() == pytest.approx(float(oracle[0, 0]), abs=1e-10)
        values.append(mb.compute())
    assert min(values) < -0.1 and max(values) > 0.1


def test_errors_are_clear():
    with pytest.raises(rs.InputError, match="at least 4 samples"):
        rs.MinibatchCKA().update(np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(rs.InputError, match="same samples"):
        rs.cka(np.random.rand(10, 2), np.random.rand(9, 2))
    with pytest.raises(rs.InputError, match="at least 4 samples"):
        rs.cka(np.random.rand(3, 2), np.random.rand(3, 2), unbiased=True)
    with pytest.raises(rs.InputError, match="kernel must be one of"):
        rs.cka(np.random.rand(10, 2), np.random.rand(10, 2), kernel="poly")
    with pytest.raises(rs.DataError, match="X has no variance"):
        rs.cka(np.full((20, 3), 0.1), np.random.rand(20, 2))
    mb = rs.MinibatchCKA()
    mb.update(np.random.rand(8, 2), np.full((8, 3), 0.3))
    with pytest.raises(rs.DataError, match="Y has no variance"):
        mb.compute()
    with pytest.raises(rs.InputError, match="no minibatch"):
        rs.MinibatchCKA().compute()
