"""Centered kernel alignment (CKA, Kornblith et al. 2019) between two representations of the same samples.

``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``K``, ``L`` the Gram matrices of ``X`` (``N x d_x``)
and ``Y`` (``N x d_y``).

- Linear kernel: computed in feature space, never as ``N x N`` Gram matrices: with centered features,
  ``HSIC ~ ||X^T Y||_F^2``, so the cost is ``O(N d^2)`` time and ``O(d^2)`` memory, and rows stream in chunks
  (exact, for memory-mapped activations of any size).
- RBF kernel: ``k(x, x') = exp(-|x - x'|^2 / (2 sigma^2 m))`` with ``m`` the median squared pairwise distance
  (Kornblith et al.'s ``threshold`` is ``sigma``); needs the ``N x N`` Gram matrices, so ``N`` is bounded.
- ``unbiased=True``: the unbiased HSIC estimator of Song et al. (2012), also in feature space for the linear
  kernel (it needs ``N >= 4``).
- :class:`LinearCKA`: the streaming twin of the linear kernel (exact, batch by batch).
- :class:`MinibatchCKA`: Nguyen et al. (2021): unbiased HSIC summed over minibatches (any kernel).
- :func:`minibatch_cka` and :class:`MinibatchCKAMatrix`: the paper's estimator, as PyTorch-Model-Compare
  (``torch_cka``) computes it: each layer output flattened (``flatten(1)``), the linear Gram matrix of each
  minibatch with its diagonal zeroed, the unbiased HSIC of Song et al. summed over minibatches, for every pair of
  layers of two models at once.

Both HSIC estimators are unchanged when a constant is added to the features, so the linear path shifts the data
by the first chunk's mean before accumulating (float64 sums, no cancellation from large activation means).
Heavy products run in float32 (float64 for float64 inputs) and accumulate in float64. The unbiased estimator
fluctuates around its expectation and can fall slightly below 0 for unrelated representations: every CKA value
is reported clipped to [0, 1].

Every estimator first multiplies each representation by a power of two (exact in floating point) that brings its
largest magnitude near 1, fixed by the first batch that is not all zeros: products of tiny (subnormal) or huge
activations would otherwise underflow to 0 or overflow (CKA is unchanged by scaling a representation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from robustsig.errors import DataError, InputError
from robustsig.metrics._checks import CHUNK_ROWS, as_matrix, compute_dtype, iter_rows, num_rows, to_tensor

KERNELS: tuple[str, ...] = ("linear", "rbf")

#: Largest number of samples for the RBF kernel in :func:`cka` (its N x N float64 Gram matrices take 0.8 GB each).
RBF_MAX_ROWS = 10_000

#: The unbiased HSIC estimator divides by n (n - 1) (n - 2) (n - 3).
MIN_UNBIASED_ROWS = 4


def _check_kernel(kernel: str, sigma: float) -> None:
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if not sigma > 0:
        raise InputError(f"sigma must be positive (a multiple of the median pairwise distance), got {sigma}")


#: HSIC(K, K) below this fraction of its scale (the squared trace of K) means a constant representation.
_CONSTANT = 1e-20


def _ratio(xy: float, xx: float, yy: float, x_scale: float, y_scale: float) -> float:
    """``xy / sqrt(xx yy)`` clipped to [0, 1]. ``x_scale``/``y_scale`` are the squared traces of the Gram
    matrices (same normalisation as ``xx``/``yy``): a representation whose self-HSIC is negligible next to its
    magnitude has no variance (up to rounding), and CKA with it is undefined."""
    for value, scale, name in ((xx, x_scale, "X"), (yy, y_scale, "Y")):
        if not value > _CONSTANT * scale:
            raise DataError(f"{name} has no variance over the samples given (constant activations?): CKA with it "
                            "is undefined")
    return min(1.0, max(0.0, xy / (xx * yy) ** 0.5))


def _exponent(X: torch.Tensor) -> int | None:
    """``e`` with ``max |X| = m 2^e``, ``m`` in [0.5, 1); None when ``X`` is all zeros, empty or not finite."""
    peak = float(torch.linalg.vector_norm(X.detach(), ord=float("inf"))) if X.numel() else 0.0  # max |x|, no copy
    return math.frexp(peak)[1] if peak > 0 and math.isfinite(peak) else None


def _scaled(X: torch.Tensor, exponent: int | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``X 2^-exponent`` (exact: a power of two), in ``dtype``; two factors, as ``2^149`` overflows float32."""
    X = X if dtype is None else X.to(dtype)
    if not exponent:
        return X
    first = -exponent // 2
    return X * 2.0**first * 2.0 ** (-exponent - first)


#: Largest ``|e|`` (``max |x| ~ 2^e``) for which float32 Gram products neither underflow nor overflow: 2^(2e) times
#: a million features stays within float32's normal range, with 24 bits to spare below the largest product.
_SAFE_EXPONENT = 40


class _Scales:
    """Per-representation powers of two, each fixed by the first batch that is not all zeros (so the batches of a
    stream stay comparable; see the module notes)."""

    def __init__(self) -> None:
        self.exponents: dict[Any, int] = {}

    def apply(self, key: Any, X: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        if key not in self.exponents:
            exponent = _exponent(X)
            if exponent is not None:
                self.exponents[key] = exponent
        return _scaled(X, self.exponents.get(key), dtype)


def _unbiased_hsic(tr_kl: float, sum_k: float, sum_l: float, one_kl_one: float, n: int) -> float:
    """Song et al. (2012) from its four terms (K, L with zeroed diagonals):
    ``[tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))``."""
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * one_kl_one / (n - 2)) / (n * (n - 3))


class LinearCKA:
    """Linear CKA streamed over row batches, exactly equal to :func:`cka` with the linear kernel on all rows.

    Keeps float64 running sums of size ``d x d``: ``X^T Y``, ``X^T X``, ``Y^T Y`` and the column sums (plus, for the
    unbiased estimator, sums weighted by squared row norms). Rows are shifted by the first batch's mean, which
    neither estimator depends on, so large activation means do not cancel precision away.

    Args:
        unbiased: use the unbiased HSIC estimator (Song et al. 2012).

    Example:
        >>> import torch
        >>> X, Y = torch.randn(1000, 8, dtype=torch.float64), torch.randn(1000, 4, dtype=torch.float64)
        >>> acc = LinearCKA()
        >>> for x, y in zip(X.split(300), Y.split(300)):
        ...     acc.update(x, y)
        >>> abs(acc.compute() - cka(X, Y)) < 1e-12
        True
    """

    def __init__(self, unbiased: bool = False) -> None:
        self.unbiased_terms = unbiased
        self.n = 0
        self._scales = _Scales()
        self.shift: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, X: Any, Y: Any) -> None:
        """Add a batch: ``X`` (``n_b x d_x``) and ``Y`` (``n_b x d_y``) for the same samples."""
        known = self.shift is not None
        X = as_matrix(X, "X (activations, samples x features)", finite=False,
                      columns=self.shift[0].shape[0] if known else None)
        Y = as_matrix(Y, "Y (activations, samples x features)", finite=False,
                      columns=self.shift[1].shape[0] if known else None)
        if X.shape[0] != Y.shape[0]:
            raise InputError(f"X and Y must hold the same samples: {X.shape[0]} and {Y.shape[0]} rows")
        dtype = compute_dtype(X, Y)
        X, Y = self._scales.apply("X", X), self._scales.apply("Y", Y)
        if self.shift is None:
            self.shift = (X.mean(0, dtype=torch.float64), Y.mean(0, dtype=torch.float64))
            dx, dy = X.shape[1], Y.shape[1]
            z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=X.device)  # noqa: E731
            self.xty, self.xtx, self.yty = z(dx, dy), z(dx, dx), z(dy, dy)
            self.sx, self.sy = z(dx), z(dy)
            if self.unbiased_terms:
                self.x_qx, self.x_qy, self.y_qx, self.y_qy = z(dx), z(dx), z(dy), z(dy)
                self.qxqy = self.qx2 = self.qy2 = 0.0
        Xs = X.to(dtype) - self.shift[0].to(dtype)  # shifted near the mean: the sums below do not cancel
        Ys = Y.to(dtype) - self.shift[1].to(dtype)
        self.xty += (Xs.T @ Ys).to(torch.float64)
        self.xtx += (Xs.T @ Xs).to(torch.float64)
        self.yty += (Ys.T @ Ys).to(torch.float64)
        self.sx += Xs.sum(0, dtype=torch.float64)
        self.sy += Ys.sum(0, dtype=torch.float64)
        if self.unbiased_terms:
            X64, Y64 = Xs.to(torch.float64), Ys.to(torch.float64)
            qx, qy = X64.square().sum(1), Y64.square().sum(1)                 # squared row norms
            self.x_qx += X64.T @ qx
            self.x_qy += X64.T @ qy
            self.y_qx += Y64.T @ qx
            self.y_qy += Y64.T @ qy
            self.qxqy += float((qx * qy).sum())
            self.qx2 += float(qx.square().sum())
            self.qy2 += float(qy.square().sum())
        self.n += X.shape[0]

    def compute(self) -> float:
        """CKA over the rows seen, in [0, 1]."""
        low = MIN_UNBIASED_ROWS if self.unbiased_terms else 2
        if self.n < low:
            raise InputError(f"{'unbiased ' if self.unbiased_terms else ''}CKA needs at least {low} samples, "
                             f"got {self.n}")
        self._check_finite()
        return self._unbiased() if self.unbiased_terms else self._biased()

    def _check_finite(self) -> None:
        """Non-finite inputs show in the column sums and the diagonals (checked once, not per entry)."""
        for name, sums, gram in (("X", self.sx, self.xtx), ("Y", self.sy, self.yty)):
            if not (bool(torch.isfinite(sums).all()) and bool(torch.isfinite(gram.diagonal()).all())):
                raise InputError(f"{name} contains NaN or infinite values (or values too large for float32)")

    def _biased(self) -> float:
        n = self.n
        cxy = self.xty - torch.outer(self.sx, self.sy) / n
        cxx = self.xtx - torch.outer(self.sx, self.sx) / n
        cyy = self.yty - torch.outer(self.sy, self.sy) / n
        x_trace, y_trace = self._traces()
        return _ratio(float(cxy.square().sum()), float(cxx.square().sum()), float(cyy.square().sum()),
                      x_trace**2, y_trace**2)

    def _traces(self) -> tuple[float, float]:
        """Traces of the uncentered linear Gram matrices, ``sum_i |x_i|^2``, in the original coordinates."""
        traces = []
        for gram, s, shift in ((self.xtx, self.sx, self.shift[0]), (self.yty, self.sy, self.shift[1])):
            traces.append(float(gram.trace()) + 2.0 * float(shift @ s) + self.n * float(shift @ shift))
        return traces[0], traces[1]

    def _unbiased(self) -> float:
        n = self.n

        def hsic(ata: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor, a_qb: torch.Tensor, b_qa: torch.Tensor,
                 qa: float, qb: float, qaqb: float) -> float:
            tr_kl = float(ata.square().sum()) - qaqb
            one_kl_one = float(sa @ ata @ sb) - float(sa @ a_qb) - float(b_qa @ sb) + qaqb
            return _unbiased_hsic(tr_kl, float(sa @ sa) - qa, float(sb @ sb) - qb, one_kl_one, n)

        qx, qy = float(self.xtx.trace()), float(self.yty.trace())            # sums of squared row norms
        xy = hsic(self.xty, self.sx, self.sy, self.x_qy, self.y_qx, qx, qy, self.qxqy)
        xx = hsic(self.xtx, self.sx, self.sx, self.x_qx, self.x_qx, qx, qx, self.qx2)
        yy = hsic(self.yty, self.sy, self.sy, self.y_qy, self.y_qy, qy, qy, self.qy2)
        x_trace, y_trace = self._traces()
        return _ratio(xy, xx, yy, (x_trace / n) ** 2, (y_trace / n) ** 2)


def _median(values: torch.Tensor) -> torch.Tensor:
    """numpy's median of all entries (mean of the two middle values for an even count)."""
    flat = values.flatten()
    m = flat.numel()
    upper = flat.kthvalue(m // 2 + 1).values
    return upper if m % 2 else (upper + flat.kthvalue(m // 2).values) / 2


def rbf_gram(X: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """RBF Gram matrix ``exp(-|x_i - x_j|^2 / (2 sigma^2 median_ij |x_i - x_j|^2))`` in float64 (Kornblith et al.)."""
    X = X.to(torch.float64)
    sq_norms = X.square().sum(1)
    sq_distances = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * X @ X.T).clamp_min_(0.0)
    median = _median(sq_distances)
    if not median > 0:
        raise DataError("the median pairwise distance is 0 (most samples are identical): the RBF bandwidth is "
                        "undefined; use kernel='linear'")
    return torch.exp(-sq_distances / (2.0 * sigma**2 * median))


def _biased_gram_hsic(K: torch.Tensor, L: torch.Tensor) -> float:
    """``tr(K H L H)`` (the scale (n-1)^-2 cancels in CKA)."""
    def center(G: torch.Tensor) -> torch.Tensor:
        return G - G.mean(0, keepdim=True) - G.mean(1, keepdim=True) + G.mean()
    return float((center(K) * center(L)).sum())


def _unbiased_gram_hsic(K: torch.Tensor, L: torch.Tensor) -> float:
    n = K.shape[0]
    K = K.clone().fill_diagonal_(0.0)
    L = L.clone().fill_diagonal_(0.0)
    return _unbiased_hsic(float((K * L).sum()), float(K.sum()), float(L.sum()),
                          float(K.sum(1) @ L.sum(1)), n)


def _gram(X: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    if kernel == "rbf":
        return rbf_gram(X, sigma)
    X = X.to(torch.float64)
    return X @ X.T


def cka(X: Any, Y: Any, kernel: str = "linear", unbiased: bool = False, sigma: float = 1.0, *,
        chunk_rows: int = CHUNK_ROWS) -> float:
    """CKA between representations ``X`` (``N x d_x``) and ``Y`` (``N x d_y``) of the same N samples.

    Args:
        X, Y: activations (tensors, numpy arrays or memory maps; rows in the same sample order).
        kernel: ``"linear"`` (feature space, streams rows ``chunk_rows`` at a time) or ``"rbf"`` (N x N Grams,
            at most :data:`RBF_MAX_ROWS` samples; use :class:`MinibatchCKA` beyond).
        unbiased: use the unbiased HSIC estimator (Song et al. 2012; needs N >= 4).
        sigma: RBF bandwidth as a multiple of the median pairwise distance.
        chunk_rows: rows per chunk for the linear kernel.

    Returns:
        CKA in [0, 1] (1: the same representation up to rotation and isotropic scaling).

    Raises:
        InputError: mismatched rows, too few samples, bad kernel.
        DataError: a representation is constant (CKA undefined).

    Example:
        >>> import torch
        >>> X = torch.randn(500, 32, dtype=torch.float64)
        >>> Q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
        >>> round(cka(X, 3.0 * X @ Q), 6)
        1.0
    """
    _check_kernel(kernel, sigma)
    n = num_rows(X, "X (activations, samples x features)")
    if num_rows(Y, "Y (activations, samples x features)") != n:
        raise InputError(f"X and Y must hold the same samples: X has {n} rows, Y has {num_rows(Y, 'Y')}")
    low = MIN_UNBIASED_ROWS if unbiased else 2
    if n < low:
        raise InputError(f"{'unbiased ' if unbiased else ''}CKA needs at least {low} samples, got {n}")
    if kernel == "linear":
        streamed = LinearCKA(unbiased)
        for (_, x), (_, y) in zip(iter_rows(X, chunk_rows), iter_rows(Y, chunk_rows)):
            streamed.update(x, y)
        return streamed.compute()
    if n > RBF_MAX_ROWS:
        raise InputError(f"the RBF kernel needs N x N Gram matrices; {n} samples exceed {RBF_MAX_ROWS}: use "
                         "kernel='linear' or rs.MinibatchCKA(kernel='rbf') over batches")
    X = as_matrix(X, "X (activations, samples x features)", dtype=torch.float64)
    Y = as_matrix(Y, "Y (activations, samples x features)", dtype=torch.float64)
    X, Y = _scaled(X, _exponent(X)), _scaled(Y, _exponent(Y))
    hsic = _unbiased_gram_hsic if unbiased else _biased_gram_hsic
    K, L = rbf_gram(X, sigma), rbf_gram(Y, sigma)
    norm = n if unbiased else 1  # the unbiased HSIC is normalised by ~n^2, the biased one here is not
    return _ratio(hsic(K, L), hsic(K, K), hsic(L, L), (float(K.trace()) / norm) ** 2, (float(L.trace()) / norm) ** 2)


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021): unbiased HSIC of each minibatch, summed over minibatches.

    ``CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))``: a consistent
    estimate from batches of any size >= 4 (smaller batches are refused: the unbiased estimator divides by
    ``n - 3``). The result is clipped to [0, 1] and never NaN; a representation that is constant over every
    batch raises :class:`~robustsig.errors.DataError` (CKA undefined).

    Args:
        kernel: ``"linear"`` or ``"rbf"`` (bandwidth from each batch's median distance).
        sigma: RBF bandwidth as a multiple of the median pairwise distance.

    Example:
        >>> import torch
        >>> X = torch.randn(1024, 16)
        >>> mb = MinibatchCKA()
        >>> for x in X.split(128):
        ...     mb.update(x, 2.0 * x + 1.0)
        >>> round(mb.compute(), 6)
        1.0
    """

    def __init__(self, kernel: str = "linear", sigma: float = 1.0) -> None:
        _check_kernel(kernel, sigma)
        self.kernel, self.sigma = kernel, sigma
        self._xy = self._xx = self._yy = self._x_scale = self._y_scale = 0.0
        self.batches = 0
        self._scales = _Scales()

    def update(self, X: Any, Y: Any) -> None:
        """Add one minibatch: ``X`` (``n x d_x``) and ``Y`` (``n x d_y``) for the same ``n >= 4`` samples."""
        X = as_matrix(X, "X (activations, samples x features)")
        Y = as_matrix(Y, "Y (activations, samples x features)")
        if X.shape[0] != Y.shape[0]:
            raise InputError(f"X and Y must hold the same samples: {X.shape[0]} and {Y.shape[0]} rows")
        if X.shape[0] < MIN_UNBIASED_ROWS:
            raise InputError(f"a minibatch needs at least {MIN_UNBIASED_ROWS} samples for the unbiased HSIC "
                             f"estimator, got {X.shape[0]}; drop or merge the last short batch")
        X, Y = self._scales.apply("X", X), self._scales.apply("Y", Y)
        K, L = _gram(X, self.kernel, self.sigma), _gram(Y, self.kernel, self.sigma)
        self._xy += _unbiased_gram_hsic(K, L)
        self._xx += _unbiased_gram_hsic(K, K)
        self._yy += _unbiased_gram_hsic(L, L)
        self._x_scale += (float(K.trace()) / X.shape[0]) ** 2
        self._y_scale += (float(L.trace()) / X.shape[0]) ** 2
        self.batches += 1

    def compute(self) -> float:
        """CKA over the minibatches seen, in [0, 1]."""
        if self.batches == 0:
            raise InputError("no minibatch was given: call update(X, Y) before compute()")
        return _ratio(self._xy, self._xx, self._yy, self._x_scale, self._y_scale)


#: The paper's minibatch size where it is not given (Nguyen et al. 2021 use minibatches of 256 samples).
PAPER_MINIBATCH = 256


def _layers(X: Any, name: str) -> list[torch.Tensor]:
    """One tensor (one layer) or a sequence of them, as a list of ``(n, ...)`` tensors."""
    items = [X] if isinstance(X, torch.Tensor) or not isinstance(X, (list, tuple)) else list(X)
    if not items:
        raise InputError(f"{name} must hold at least one layer output, got an empty sequence")
    tensors = [to_tensor(item, f"{name}[{i}]") for i, item in enumerate(items)]
    for i, t in enumerate(tensors):
        if t.ndim < 2 or t.is_complex():
            raise InputError(f"{name}[{i}] must be a real (samples, ...) layer output with at least 2 dimensions, "
                             f"got shape {tuple(t.shape)} and dtype {t.dtype}")
    return tensors


class MinibatchCKAMatrix:
    """The paper's CKA between every layer of a model a and every layer of a model b, streamed over minibatches,
    as PyTorch-Model-Compare (``torch_cka``, used by Crabbé et al., App. B) computes it.

    For each minibatch of the same ``n >= 4`` samples through both models, each layer output is flattened
    (``flatten(1)``: every token or spatial position, not pooled), its linear Gram matrix ``K = X X^T`` formed and
    its diagonal zeroed, and the unbiased HSIC of Song et al. (2012) taken,
    ``HSIC(K, L) = [tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))``. Then
    ``CKA[i, j] = sum_b HSIC(K_ib, L_jb) / sqrt(sum_b HSIC(K_ib, K_ib) * sum_b HSIC(L_jb, L_jb))``.

    Only the ``n x n`` Gram matrices of the current minibatch are held: never a dataset's flattened activations.
    Gram products run in float32 (float64 for float64 inputs), as the model runs; the HSIC terms and their sums in
    float64 (``torch_cka`` keeps them in float32: the two agree to about 1e-6). Each layer is first scaled by a power
    of two fixed by its first non-zero minibatch (exact; see the module notes).

    Example:
        >>> import torch
        >>> a = [torch.randn(64, 8, 4, 4), torch.randn(64, 10)]          # two layer outputs of model a
        >>> acc = MinibatchCKAMatrix()
        >>> for i in range(0, 64, 16):
        ...     acc.update([x[i:i + 16] for x in a], [2.0 * a[1][i:i + 16]])
        >>> acc.compute().shape, round(float(acc.compute()[1, 0]), 6)
        (torch.Size([2, 1]), 1.0)
    """

    def __init__(self) -> None:
        self._scales = _Scales()
        self.batches = 0
        self.samples = 0
        self._sums: dict[str, torch.Tensor] = {}

    def gram(self, side: str, index: int, x: Any) -> torch.Tensor:
        """The linear Gram matrix ``X X^T`` (``n x n``, float64) of one minibatch of layer ``index`` of model
        ``side`` (``"a"`` or ``"b"``), ``X = x.flatten(1)`` scaled by the layer's power of two. Compute it as
        soon as a layer's output is known (a forward hook) and pass it to :meth:`update_grams`; the flattened
        output can then be freed."""
        if side not in ("a", "b"):
            raise InputError(f"side must be 'a' or 'b', got {side!r}")
        X = _layers(x, f"layer {index} of model {side}")[0].flatten(1)
        X = X.to(torch.float64 if X.dtype == torch.float64 else torch.float32)
        exponent = _exponent(X)
        reference = self._scales.exponents.setdefault((side, index), exponent) if exponent is not None else \
            self._scales.exponents.get((side, index))
        scale = 1.0
        if reference is not None and exponent is not None:  # else all zeros so far, or not finite (see compute())
            if max(abs(exponent), abs(reference)) <= _SAFE_EXPONENT:  # no under/overflow: scale the small Gram
                scale = 2.0 ** (-2 * reference)
            else:
                X = _scaled(X, reference)
        with torch.autocast(X.device.type, enabled=False):  # called from a forward hook under fp16/bf16 autocast
            return (X @ X.T).to(torch.float64) * scale

    def update(self, X: Any, Y: Any) -> None:
        """Add one minibatch: ``X`` the layer outputs of model a (a tensor ``(n, ...)`` or a sequence of them, one
        per layer), ``Y`` those of model b, for the same ``n >= 4`` samples in the same order."""
        xs, ys = _layers(X, "X"), _layers(Y, "Y")
        self.update_grams([self.gram("a", i, x) for i, x in enumerate(xs)],
                          [self.gram("b", j, y) for j, y in enumerate(ys)])

    def update_grams(self, K: Sequence[torch.Tensor], L: Sequence[torch.Tensor]) -> None:
        """Add one minibatch given as Gram matrices (from :meth:`gram`): ``K`` one ``n x n`` matrix per layer of
        model a, ``L`` one per layer of model b."""
        grams = [torch.as_tensor(g, dtype=torch.float64).clone() for g in (*K, *L)]  # small; the caller's kept
        n = grams[0].shape[0] if grams else 0
        if not K or not L or any(g.shape != (n, n) for g in grams):
            raise InputError(f"K and L must be non-empty sequences of n x n Gram matrices of the same n samples, got "
                             f"shapes {[tuple(g.shape) for g in grams]}")
        if n < MIN_UNBIASED_ROWS:
            raise InputError(f"a minibatch needs at least {MIN_UNBIASED_ROWS} samples for the unbiased HSIC "
                             f"estimator, got {n}; drop or merge the last short batch")
        if self._sums and (len(K), len(L)) != tuple(self._sums["xy"].shape):
            raise InputError(f"every minibatch must give the same layers: {tuple(self._sums['xy'].shape)} so far, "
                             f"now {len(K)} and {len(L)}")
        scale = torch.stack([(g.diagonal().sum() / n) ** 2 for g in grams])  # for the constant check of _ratio
        for g in grams:
            g.fill_diagonal_(0.0)
        rows = torch.stack([g.sum(1) for g in grams])                         # K 1 per layer
        sums, flat = rows.sum(1), torch.stack([g.reshape(-1) for g in grams])
        a = len(K)
        tr_kl = flat[:a] @ flat[a:].T                                          # tr(K L) = <K, L> (symmetric)
        self_tr = flat.square().sum(1)
        one_kl_one = rows[:a] @ rows[a:].T
        terms = {"xy": _unbiased_hsic(tr_kl, sums[:a, None], sums[None, a:], one_kl_one, n),
                 "self": _unbiased_hsic(self_tr, sums, sums, rows.square().sum(1), n), "scale": scale}
        for key, value in terms.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self.batches += 1
        self.samples += n

    def _values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CKA (``len(K) x len(L)``, clipped to [0, 1]) and the mask of undefined entries (a constant layer)."""
        if not self.batches:
            raise InputError("no minibatch was given: call update(X, Y) before compute()")
        xy, own, scale = self._sums["xy"], self._sums["self"], self._sums["scale"]
        a = xy.shape[0]
        if not bool(torch.isfinite(own).all()):
            raise InputError("the layer outputs contain NaN or infinite values")
        constant = ~(own > _CONSTANT * scale)
        values = (xy / (own[:a, None] * own[None, a:]).clamp_min(0.0).sqrt()).clamp(0.0, 1.0)
        undefined = constant[:a, None] | constant[None, a:]
        return values.masked_fill(undefined, float("nan")), undefined

    def compute(self) -> torch.Tensor:
        """CKA of every layer of a (rows) with every layer of b (columns), float64 in [0, 1]; NaN, with a warning,
        where a layer is constant over every minibatch (CKA undefined)."""
        values, undefined = self._values()
        if bool(undefined.any()):
            pairs = [tuple(pair) for pair in undefined.nonzero().tolist()]
            warnings.warn(f"CKA is undefined (NaN) for {len(pairs)} layer pair(s) (a, b) {pairs[:6]}"
                          f"{' ...' if len(pairs) > 6 else ''}: a layer is constant over the samples",
                          RuntimeWarning, stacklevel=2)
        return values


def minibatch_cka(X: Any, Y: Any, batch_size: int = PAPER_MINIBATCH) -> float:
    """The paper's CKA (``torch_cka``'s estimator, see :class:`MinibatchCKAMatrix`) between two layer outputs.

    Args:
        X, Y: outputs of one layer of each model for the same N samples, ``(N, ...)`` (flattened per sample).
        batch_size: samples per minibatch; consecutive rows form the minibatches, and a last minibatch of fewer
            than 4 rows is left out (with a warning: the unbiased HSIC is undefined on it).

    Returns:
        CKA in [0, 1].

    Raises:
        InputError: mismatched rows, ``batch_size`` below 4, non-finite values.
        DataError: a representation is constant (CKA undefined).

    Example:
        >>> import torch
        >>> X = torch.randn(512, 4, 6)
        >>> Q, _ = torch.linalg.qr(torch.randn(24, 24))
        >>> round(minibatch_cka(X, X.flatten(1) @ Q, batch_size=128), 5)
        1.0
    """
    if not isinstance(batch_size, int) or batch_size < MIN_UNBIASED_ROWS:
        raise InputError(f"batch_size must be an integer >= {MIN_UNBIASED_ROWS}, got {batch_size!r}")
    if not hasattr(X, "shape"):
        X = to_tensor(X, "X")
    if not hasattr(Y, "shape"):
        Y = to_tensor(Y, "Y")
    for name, value in (("X", X), ("Y", Y)):
        if len(value.shape) < 2:
            raise InputError(f"{name} must be a (samples, ...) layer output with at least 2 dimensions, got shape "
                             f"{tuple(value.shape)}")
    n = int(X.shape[0])
    if int(Y.shape[0]) != n:
        raise InputError(f"X and Y must hold the same samples: X has {n} rows, Y has {int(Y.shape[0])}")
    stop = n if n % batch_size == 0 or n % batch_size >= MIN_UNBIASED_ROWS else n - n % batch_size
    if stop < n:
        warnings.warn(f"the last {n - stop} sample(s) are left out: a minibatch needs {MIN_UNBIASED_ROWS}",
                      RuntimeWarning, stacklevel=2)
    if stop == 0:
        raise InputError(f"minibatch CKA needs at least {MIN_UNBIASED_ROWS} samples, got {n}")
    accumulator = MinibatchCKAMatrix()
    for start in range(0, stop, batch_size):
        accumulator.update(to_tensor(X[start:start + batch_size], "X"), to_tensor(Y[start:start + batch_size], "Y"))
    values, undefined = accumulator._values()
    if bool(undefined.any()):
        raise DataError("a representation is constant over the samples given: CKA with it is undefined")
    return float(values[0, 0])
