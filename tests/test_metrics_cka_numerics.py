"""CKA's numerics (issues 19.2 and 21): values as torch_cka gives them (unclipped), minibatches centred before their
Gram matrix, the constant check on the centred scale, and one power of two for a whole stream.

Oracles: the installed torch_cka package (PyTorch-Model-Compare 0.21, the paper's) run in float64, its ``_HSIC``
transcribed (tests/cka_oracle.py), exact rational arithmetic, and planted answers (a rotation of the centred
features has CKA exactly 1)."""

from __future__ import annotations

import random
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import robustsig as rs
from robustsig.metrics.cka import Gram, LinearCKA, MinibatchCKA, MinibatchCKAMatrix, cka, minibatch_cka

from cka_oracle import torch_cka_compare


def _torch_cka_package(X: torch.Tensor, Y: torch.Tensor, batch_size: int) -> float:
    """``torch_cka.CKA.compare`` of two feature sets (identity models, their layer "0"), in float64."""
    torch_cka = pytest.importorskip("torch_cka")
    from torch.utils.data import DataLoader, TensorDataset

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its HSIC builds default-dtype `ones`
    try:
        loaders = [DataLoader(TensorDataset(Z.double(), torch.zeros(len(Z))), batch_size=batch_size) for Z in (X, Y)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = torch_cka.CKA(nn.Sequential(nn.Identity()), nn.Sequential(nn.Identity()), model1_name="a",
                                      model2_name="b", model1_layers=["0"], model2_layers=["0"])
            reference.compare(*loaders)
        return float(reference.export()["CKA"][0, 0])
    finally:
        torch.set_default_dtype(previous)


def _batches(Z: torch.Tensor, size: int) -> list[list[torch.Tensor]]:
    return [[z] for z in Z.split(size)]


# --- 19.2: unclipped, as torch_cka gives it ------------------------------------------------------------------
def test_negative_value_equals_the_torch_cka_package():
    """Unrelated features: torch_cka says -0.015 here, robustsig said 0.0 (clipped)."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64)
    Y = torch.randn(200, 5, generator=g, dtype=torch.float64)
    expected = _torch_cka_package(X, Y, 50)
    assert expected < -0.01
    assert minibatch_cka(X, Y, batch_size=50) == pytest.approx(expected, abs=1e-12)
    assert minibatch_cka(X.float(), Y.float(), batch_size=50) == pytest.approx(expected, abs=1e-6)
    acc = MinibatchCKAMatrix()
    mb = MinibatchCKA()
    for x, y in zip(X.split(50), Y.split(50)):
        acc.update(x, y)
        mb.update(x, y)
    assert float(acc.compute()[0, 0]) == pytest.approx(expected, abs=1e-12)
    assert mb.compute() == pytest.approx(expected, abs=1e-12)


# --- 19.2: centring a minibatch leaves the unbiased HSIC unchanged ---------------------------------------------
def _song(K: list[list[Fraction]], L: list[list[Fraction]]) -> Fraction:
    """Song et al.'s unbiased HSIC (torch_cka's ``_HSIC``) in exact arithmetic; the diagonals are zeroed."""
    n = len(K)
    K = [[K[i][j] if i != j else Fraction(0) for j in range(n)] for i in range(n)]
    L = [[L[i][j] if i != j else Fraction(0) for j in range(n)] for i in range(n)]
    tr_kl = sum(K[i][j] * L[j][i] for i in range(n) for j in range(n))
    k1, l1 = [sum(row) for row in K], [sum(row) for row in L]
    one_kl_one = sum(k1[j] * l1[j] for j in range(n))                     # 1'K L 1 = (K 1)'(L 1), K symmetric
    return (tr_kl + sum(k1) * sum(l1) / ((n - 1) * (n - 2)) - 2 * one_kl_one / (n - 2)) / (n * (n - 3))


def test_shift_invariance_is_exact():
    """Adding ``u 1' + 1 u' + c 1 1'`` to a Gram matrix (what a constant shift of the rows, or double-centring, does
    to it) leaves the unbiased HSIC exactly unchanged, in rational arithmetic (the proof is in the module notes)."""
    rng = random.Random(5)
    for n in (4, 5, 9):
        def symmetric() -> list[list[Fraction]]:
            A = [[Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(n)] for _ in range(n)]
            return [[A[i][j] + A[j][i] for j in range(n)] for i in range(n)]

        K, L = symmetric(), symmetric()
        u = [Fraction(rng.randint(-99, 99), rng.randint(1, 7)) for _ in range(n)]
        c = Fraction(rng.randint(-99, 99), 13)
        shifted = [[K[i][j] + u[i] + u[j] + c for j in range(n)] for i in range(n)]
        assert _song(K, L) != 0
        assert _song(shifted, L) == _song(K, L)
        assert _song(L, shifted) == _song(L, K)


def test_centred_minibatches_equal_the_uncentred_float64_computation():
    """Per minibatch, centred features give torch_cka's value on the raw ones (float64, a moderate mean)."""
    g = torch.Generator().manual_seed(6)
    X = 5.0 + torch.randn(240, 7, generator=g, dtype=torch.float64)
    Y = torch.tanh(X[:, :4] @ torch.randn(4, 9, generator=g, dtype=torch.float64)) + 3.0
    Y += 0.5 * torch.randn(240, 9, generator=g, dtype=torch.float64)
    oracle = float(torch_cka_compare(_batches(X, 60), _batches(Y, 60))[0, 0])  # uncentred Grams, float64
    assert 0.2 < oracle < 0.95
    assert minibatch_cka(X, Y, batch_size=60) == pytest.approx(oracle, abs=1e-12)
    plain = MinibatchCKAMatrix()                          # user Gram matrices X X^T, uncentred: centred inside
    for x, y in zip(X.split(60), Y.split(60)):
        plain.update_grams([x @ x.T], [y @ y.T])
    assert float(plain.compute()[0, 0]) == pytest.approx(oracle, abs=1e-12)


@pytest.mark.parametrize("noise", [0.3, 0.1])
def test_large_mean_keeps_float32_precision(noise):
    """X = 1000 + noise (300 x 8) and Y a rotation of X - 1000: CKA is exactly 1 (the estimator ignores the mean).
    Uncentred float32 Gram matrices gave 0.63 (0.3) and 0.094 (0.1), and MinibatchCKA a DataError at 0.1."""
    g = torch.Generator().manual_seed(0)
    X = 1000 + noise * torch.randn(300, 8, generator=g)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    Y = ((X.double() - 1000) @ Q).float()
    assert minibatch_cka(X, Y, batch_size=100) == pytest.approx(1.0, abs=1e-5)
    mb, acc = MinibatchCKA(), MinibatchCKAMatrix()
    for x, y in zip(X.split(100), Y.split(100)):
        mb.update(x, y)
        acc.update([x, y], [y])
    assert mb.compute() == pytest.approx(1.0, abs=1e-5)
    assert acc.compute().flatten().tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert cka(X, Y) == pytest.approx(1.0, abs=1e-5)


# --- 19.2: the constant check on the centred scale -------------------------------------------------------------
def test_a_large_mean_is_not_a_constant():
    """X = 1000 + 0.01 noise was refused ("no variance": its HSIC was compared with the uncentred trace); float64
    gives CKA 1 with a rotation of X - 1000."""
    rng = np.random.default_rng(7)
    X = 1000 + 0.01 * rng.normal(size=(300, 8))
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    Y = (X - 1000) @ Q
    for kernel, unbiased in (("linear", False), ("linear", True), ("rbf", False), ("rbf", True)):
        assert cka(X, Y, kernel=kernel, unbiased=unbiased) == pytest.approx(1.0, abs=1e-9)
    mb = MinibatchCKA()
    for rows in np.split(np.arange(300), 3):
        mb.update(X[rows], Y[rows])
    assert mb.compute() == pytest.approx(1.0, abs=1e-9)


def test_constant_up_to_rounding_is_still_refused():
    rng = np.random.default_rng(8)
    Y = rng.normal(size=(64, 3))
    eps = np.finfo(np.float64).eps
    wobble = 1.0 + eps * rng.integers(0, 2, size=(64, 4))                 # constant but for one rounding unit
    for X in (np.full((64, 4), 0.1), wobble):
        for kernel, unbiased in (("linear", False), ("linear", True), ("rbf", True)):
            with pytest.raises(rs.DataError, match="X has no variance"):
                cka(X, Y, kernel=kernel, unbiased=unbiased)
        with pytest.raises(rs.DataError, match="X has no variance"):
            minibatch_cka(X, Y, batch_size=16)
        mb = MinibatchCKA()
        mb.update(Y[:16], X[:16])
        with pytest.raises(rs.DataError, match="Y has no variance"):
            mb.compute()
    X32 = (1.0 + np.finfo(np.float32).eps * rng.integers(0, 2, size=(64, 4))).astype(np.float32)
    for kernel in ("linear", "rbf"):
        with pytest.raises(rs.DataError, match="X has no variance"):
            cka(X32, Y, kernel=kernel, unbiased=True)
    mb = MinibatchCKA()
    mb.update(X32[:16], Y[:16])
    with pytest.raises(rs.DataError, match="X has no variance"):
        mb.compute()
    bf16 = torch.from_numpy(1.0 + 2.0**-7 * rng.integers(0, 2, size=(64, 4))).to(torch.bfloat16)  # its eps: 2^-7
    acc = MinibatchCKAMatrix()
    for rows in np.split(np.arange(64), 4):
        acc.update([X32[rows], Y[rows], bf16[rows]], [Y[rows]])
    with pytest.warns(RuntimeWarning, match="undefined"):
        values = acc.compute()
    assert bool(values[0, 0].isnan()) and bool(values[2, 0].isnan())
    assert float(values[1, 0]) == pytest.approx(1.0, abs=1e-12)


# --- issue 21: one power of two for the whole input -------------------------------------------------------------
def _tiny_first(dtype: np.dtype, tiny: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    X = rng.normal(size=(1024, 16))
    Y = X[:, :8] @ rng.normal(size=(8, 12)) + rng.normal(size=(1024, 12))
    X[:256] *= tiny
    Y[:256] *= tiny
    return X.astype(dtype), Y.astype(dtype)


def _reference(X: np.ndarray, Y: np.ndarray) -> float:
    """Biased linear CKA of the stored values in float64 numpy (tiny rows contribute below rounding)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xc, Yc = Xc.astype(np.float64), Yc.astype(np.float64)
    return np.linalg.norm(Xc.T @ Yc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


@pytest.mark.parametrize("dtype,tiny", [(np.float32, 1e-30), (np.float32, 1e-40), (np.float64, 1e-50),
                                        (np.float64, 1e-100), (np.float64, 1e-300)])
def test_tiny_rows_first_give_one_answer(dtype, tiny):
    """Tiny rows first fixed the scale of every later batch: with 256-row chunks float32 raised a false "not finite"
    error, float64 at 1e-50 gave 0.0 (its sums overflowed to NaN, clipped to 0) and at 1e-100 an OverflowError
    traceback; with 512-row chunks all gave 0.5255."""
    X, Y = _tiny_first(dtype, tiny)
    expected = _reference(X.astype(np.float64), Y.astype(np.float64))
    assert 0.3 < expected < 0.8
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    for unbiased in (False, True):
        values = [cka(X, Y, unbiased=unbiased, chunk_rows=rows) for rows in (256, 512, 1024)]
        assert values == pytest.approx([values[-1]] * 3, abs=tolerance)
    assert cka(X, Y, chunk_rows=256) == pytest.approx(expected, abs=tolerance)
    streamed = LinearCKA()
    for rows in (slice(0, 100), slice(100, 700), slice(700, 1024)):
        streamed.update(X[rows], Y[rows])
    assert streamed.compute() == pytest.approx(expected, abs=tolerance)
    # the minibatch estimators: torch_cka's value on the same stored values, in float64
    X64, Y64 = torch.from_numpy(X.astype(np.float64)), torch.from_numpy(Y.astype(np.float64))
    oracle = float(torch_cka_compare(_batches(X64, 256), _batches(Y64, 256))[0, 0])
    assert minibatch_cka(X, Y, batch_size=256) == pytest.approx(oracle, abs=tolerance)
    mb = MinibatchCKA()
    for rows in np.split(np.arange(1024), 4):
        mb.update(X[rows], Y[rows])
    assert mb.compute() == pytest.approx(oracle, abs=tolerance)


def test_a_larger_scale_later_rescales_the_sums_exactly():
    """Ordinary batches, then one 2^600 times larger (its products overflow float64 in the first batch's units:
    InputError before), then tiny ones: the sums accumulated so far are multiplied by exact powers of two, so the
    value is the one of the same batches presented largest first."""
    g = torch.Generator().manual_seed(10)
    X = torch.randn(400, 6, generator=g, dtype=torch.float64)
    Y = X[:, :3] @ torch.randn(3, 5, generator=g, dtype=torch.float64) + torch.randn(400, 5, generator=g,
                                                                                   dtype=torch.float64)
    X[100:200] *= 2.0**600
    Y[100:200] *= 2.0**500
    X[300:] *= 2.0**-80                                      # one side's scale shrinks while the other's stays
    largest_first = torch.cat([torch.arange(100, 200), torch.arange(100), torch.arange(200, 400)])
    values = []
    for order, scale in ((torch.arange(400), (1.0, 1.0)), (largest_first, (1.0, 1.0)),
                         (torch.arange(400), (2.0**-600, 2.0**-500))):   # CKA is scale-free: exact powers of two
        linear, unbiased, matrix = LinearCKA(), LinearCKA(unbiased=True), MinibatchCKAMatrix()
        for rows in order.split(100):
            for estimator in (linear, unbiased, matrix):
                estimator.update(X[rows] * scale[0], Y[rows] * scale[1])
        values.append([linear.compute(), unbiased.compute(), float(matrix.compute()[0, 0])])
    assert values[0] == pytest.approx(values[1], abs=1e-12)
    assert values[0] == pytest.approx(values[2], abs=1e-12)
    assert 0.3 < min(values[0]) and max(values[0]) < 0.6


def test_gram_carries_its_power_of_two():
    """:meth:`MinibatchCKAMatrix.gram` returns ``K = matrix 2^exponent``; a plain matrix is read as ``exponent 0``."""
    x = 2.0**-140 * torch.randn(8, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    K = MinibatchCKAMatrix().gram("a", 0, x)
    assert isinstance(K, Gram) and float(K.matrix.abs().max()) > 0.01
    xc = x - x.mean(0)
    torch.testing.assert_close(K.matrix * 2.0**K.exponent, xc @ xc.T, rtol=1e-12, atol=0)
