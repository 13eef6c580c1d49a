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

**Range.** The biased estimator lies in [0, 1]. The unbiased one fluctuates around its expectation: near
independence it is legitimately negative (torch_cka reports -0.026 where a clipped value said 0), and on very few
samples it can leave [-1, 1]. No value is clipped: the numbers are torch_cka's and Kornblith et al.'s.

**Centring.** Adding a constant vector ``m`` to every row of ``X`` changes neither estimator, and precision is lost
when the features have a large mean (post-ReLU layers do): float32 Gram entries of ``1000 + 0.3 noise`` keep about
one significant digit of the noise. So the linear path shifts the data by the first chunk's mean before
accumulating (float64 sums), and each minibatch is centred by its own column means before its Gram matrix (the
Gram matrices passed to :meth:`MinibatchCKAMatrix.update_grams` are double-centred in float64). Why the unbiased
estimator is unchanged: the shift changes a linear Gram matrix by ``D = u 1' + 1 u' + c 1 1'`` (``u = X m``,
``c = |m|^2``; double-centring ``H K H`` is of the same form), and the estimator only reads the off-diagonal entries,
through ``[tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))``, which is linear in ``K``. With ``D``'s
diagonal zeroed, ``D 1 = (n-2) u + (U + (n-1) c) 1`` (``U = 1'u``), so for any ``L`` with zero diagonal, row sums
``l = L 1`` and ``S = 1'L1``: ``tr(DL) = 2 u'l + c S``, ``1'D1 = 2 (n-1) U + n (n-1) c`` and
``1'DL1 = (n-2) u'l + U S + (n-1) c S``; the bracket is ``c S [1 + n/(n-2) - 2 (n-1)/(n-2)] = 0``.

**Constant representations.** A representation whose centred sum of squares is at most one squared rounding unit
(``eps`` of its dtype) of its raw sum of squares has no variance up to rounding: CKA with it is undefined
(:class:`~robustsig.errors.DataError`, or NaN in :class:`MinibatchCKAMatrix`), and a minibatch in which a layer is
so is left at zero HSIC. ``1000 + 0.01 noise`` is not constant (float64 gives CKA 1 with its rotation).

**Scale.** Products of tiny (subnormal) or huge activations underflow to 0 or overflow, so each representation is
multiplied by a power of two (exact in floating point; CKA is unchanged by scaling a representation). The power is
one for the whole input, not one per batch: a stream keeps the largest magnitude seen so far, and when a batch
brings a larger one, the sums accumulated so far are multiplied by the matching power of two (exact, or negligible
next to the new scale). A minibatch's Gram matrix carries its own power of two (:class:`Gram`).

Heavy products run in float32 (float64 for float64 inputs) and accumulate in float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

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


#: HSIC(K, K) below this fraction of its scale (the squared trace of the centred K) means a degenerate representation.
_CONSTANT = 1e-20


def _constant(name: str) -> DataError:
    return DataError(f"{name} has no variance over the samples given (constant activations, up to rounding?): CKA "
                     "with it is undefined")


def _no_variance(centred: float, raw: float, dtype: torch.dtype) -> bool:
    """Whether a representation is constant up to rounding: its centred sum of squares ``centred`` is at most one
    squared rounding unit of ``dtype`` times its raw sum of squares ``raw`` (the test scipy applies to moments)."""
    return not centred > torch.finfo(dtype).eps ** 2 * raw


def _ratio(xy: float, xx: float, yy: float, x_scale: float, y_scale: float) -> float:
    """``xy / sqrt(xx yy)``, unclipped. ``x_scale``/``y_scale`` are the squared traces of the centred Gram matrices
    (same normalisation as ``xx``/``yy``): a self-HSIC that is not positive, or negligible next to it, leaves CKA
    undefined."""
    for value, scale, name in ((xx, x_scale, "X"), (yy, y_scale, "Y")):
        if not value > _CONSTANT * scale:
            raise _constant(name)
    return xy / math.sqrt(xx) / math.sqrt(yy)


def _exponent(X: torch.Tensor) -> int | None:
    """``e`` with ``max |X| = m 2^e``, ``m`` in [0.5, 1); None when ``X`` is all zeros, empty or not finite."""
    if not X.numel():
        return None
    low, high = torch.aminmax(X.detach())                    # one pass, no copy (an inf-norm is far slower on CPU)
    peak = max(-float(low), float(high))
    return math.frexp(peak)[1] if peak > 0 and math.isfinite(peak) else None


def _scaled(X: torch.Tensor, exponent: int | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``X 2^-exponent`` (exact: a power of two), in ``dtype``; two factors, as ``2^149`` overflows float32."""
    X = X if dtype is None else X.to(dtype)
    if not exponent:
        return X
    first = -exponent // 2
    return X * 2.0**first * 2.0 ** (-exponent - first)


def _raise_exponent(exponents: dict[Any, int], key: Any, exponent: int | None) -> int:
    """Raise ``exponents[key]`` (a stream's power of two) to ``exponent`` if larger; return by how many bits it grew
    (the sums accumulated in the old units are then multiplied by ``2^-(bits * degree)``)."""
    if exponent is None:
        return 0
    old = exponents.setdefault(key, exponent)
    if exponent <= old:
        return 0
    exponents[key] = exponent
    return exponent - old


def _unbiased_hsic(tr_kl: Any, sum_k: Any, sum_l: Any, one_kl_one: Any, n: int) -> Any:
    """Song et al. (2012) from its four terms (K, L with zeroed diagonals):
    ``[tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))``."""
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * one_kl_one / (n - 2)) / (n * (n - 3))


#: LinearCKA's running sums and their degree in X and in Y: when X's power of two grows by k bits, a sum of degree
#: ``(p, q)`` is multiplied by ``2^(-k p)`` (and by ``2^(-k q)`` for Y's).
_DEGREES: dict[str, tuple[int, int]] = {
    "shift_x": (1, 0), "shift_y": (0, 1), "sx": (1, 0), "sy": (0, 1), "xtx": (2, 0), "yty": (0, 2), "xty": (1, 1),
    "x_qx": (3, 0), "x_qy": (1, 2), "y_qx": (2, 1), "y_qy": (0, 3), "qxqy": (2, 2), "qx2": (4, 0), "qy2": (0, 4)}


class LinearCKA:
    """Linear CKA streamed over row batches, exactly equal to :func:`cka` with the linear kernel on all rows.

    Keeps float64 running sums of size ``d x d``: ``X^T Y``, ``X^T X``, ``Y^T Y`` and the column sums (plus, for the
    unbiased estimator, sums weighted by squared row norms). Rows are shifted by the first batch's mean, which
    neither estimator depends on, so large activation means do not cancel precision away; each representation is
    scaled by one power of two, its largest magnitude so far (see the module notes), so the result does not depend
    on where the batches split.

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
        self._exponents: dict[str, int] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._rounding: dict[str, torch.dtype] = {}

    def update(self, X: Any, Y: Any) -> None:
        """Add a batch: ``X`` (``n_b x d_x``) and ``Y`` (``n_b x d_y``) for the same samples."""
        sums = self._sums
        X, Y = to_tensor(X, "X"), to_tensor(Y, "Y")
        for side, batch in zip("XY", (X, Y)):                                # the coarsest rounding of each side
            rounding = batch.dtype if batch.is_floating_point() else torch.float64
            if torch.finfo(rounding).eps > torch.finfo(self._rounding.get(side, torch.float64)).eps:
                self._rounding[side] = rounding
        X = as_matrix(X, "X (activations, samples x features)", finite=False,
                      columns=sums["sx"].shape[0] if sums else None)
        Y = as_matrix(Y, "Y (activations, samples x features)", finite=False,
                      columns=sums["sy"].shape[0] if sums else None)
        if X.shape[0] != Y.shape[0]:
            raise InputError(f"X and Y must hold the same samples: {X.shape[0]} and {Y.shape[0]} rows")
        dtype = compute_dtype(X, Y)
        for side, batch in enumerate((X, Y)):
            grown = _raise_exponent(self._exponents, "XY"[side], _exponent(batch))
            if grown and sums:
                for key, degrees in _DEGREES.items():
                    if key in sums:
                        sums[key] = sums[key] * 2.0 ** (-grown * degrees[side])
        X, Y = _scaled(X, self._exponents.get("X")), _scaled(Y, self._exponents.get("Y"))
        if not sums:
            dx, dy = X.shape[1], Y.shape[1]
            z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=X.device)  # noqa: E731
            sums.update(shift_x=X.mean(0, dtype=torch.float64), shift_y=Y.mean(0, dtype=torch.float64),
                        xty=z(dx, dy), xtx=z(dx, dx), yty=z(dy, dy), sx=z(dx), sy=z(dy))
            if self.unbiased_terms:
                sums.update(x_qx=z(dx), x_qy=z(dx), y_qx=z(dy), y_qy=z(dy), qxqy=z(()), qx2=z(()), qy2=z(()))
        Xs = X.to(dtype) - sums["shift_x"].to(dtype)  # shifted near the mean: the sums below do not cancel
        Ys = Y.to(dtype) - sums["shift_y"].to(dtype)
        sums["xty"] += (Xs.T @ Ys).to(torch.float64)
        sums["xtx"] += (Xs.T @ Xs).to(torch.float64)
        sums["yty"] += (Ys.T @ Ys).to(torch.float64)
        sums["sx"] += Xs.sum(0, dtype=torch.float64)
        sums["sy"] += Ys.sum(0, dtype=torch.float64)
        if self.unbiased_terms:
            X64, Y64 = Xs.to(torch.float64), Ys.to(torch.float64)
            qx, qy = X64.square().sum(1), Y64.square().sum(1)                 # squared row norms
            sums["x_qx"] += X64.T @ qx
            sums["x_qy"] += X64.T @ qy
            sums["y_qx"] += Y64.T @ qx
            sums["y_qy"] += Y64.T @ qy
            sums["qxqy"] += (qx * qy).sum()
            sums["qx2"] += qx.square().sum()
            sums["qy2"] += qy.square().sum()
        self.n += X.shape[0]

    def compute(self) -> float:
        """CKA over the rows seen: in [0, 1] for the biased estimator; the unbiased one can be negative (see the
        module notes)."""
        low = MIN_UNBIASED_ROWS if self.unbiased_terms else 2
        if self.n < low:
            raise InputError(f"{'unbiased ' if self.unbiased_terms else ''}CKA needs at least {low} samples, "
                             f"got {self.n}")
        self._check_finite()
        traces = self._centred_traces()
        return self._unbiased(*traces) if self.unbiased_terms else self._biased(*traces)

    def _check_finite(self) -> None:
        """Non-finite inputs show in the column sums and the diagonals (checked once, not per entry)."""
        for name, sums, gram in (("X", self._sums["sx"], self._sums["xtx"]), ("Y", self._sums["sy"],
                                                                               self._sums["yty"])):
            if not (bool(torch.isfinite(sums).all()) and bool(torch.isfinite(gram.diagonal()).all())):
                raise InputError(f"{name} contains NaN or infinite values (or values too large for float32)")

    def _centred_traces(self) -> tuple[float, float]:
        """``sum_i |x_i - mean|^2`` of X and of Y (the traces of the centred Gram matrices), after refusing a
        representation that is constant up to rounding (against ``sum_i |x_i|^2`` in the original coordinates)."""
        traces = []
        for name, gram, s, shift in (("X", self._sums["xtx"], self._sums["sx"], self._sums["shift_x"]),
                                     ("Y", self._sums["yty"], self._sums["sy"], self._sums["shift_y"])):
            centred = float(gram.trace()) - float(s @ s) / self.n
            raw = float(gram.trace()) + 2.0 * float(shift @ s) + self.n * float(shift @ shift)
            if _no_variance(centred, raw, self._rounding.get(name, torch.float64)):
                raise _constant(name)
            traces.append(centred)
        return traces[0], traces[1]

    def _biased(self, x_trace: float, y_trace: float) -> float:
        s, n = self._sums, self.n
        cxy = s["xty"] - torch.outer(s["sx"], s["sy"]) / n
        cxx = s["xtx"] - torch.outer(s["sx"], s["sx"]) / n
        cyy = s["yty"] - torch.outer(s["sy"], s["sy"]) / n
        return _ratio(float(cxy.square().sum()), float(cxx.square().sum()), float(cyy.square().sum()),
                      x_trace**2, y_trace**2)

    def _unbiased(self, x_trace: float, y_trace: float) -> float:
        s, n = self._sums, self.n

        def hsic(ata: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor, a_qb: torch.Tensor, b_qa: torch.Tensor,
                 qa: float, qb: float, qaqb: float) -> float:
            tr_kl = float(ata.square().sum()) - qaqb
            one_kl_one = float(sa @ ata @ sb) - float(sa @ a_qb) - float(b_qa @ sb) + qaqb
            return _unbiased_hsic(tr_kl, float(sa @ sa) - qa, float(sb @ sb) - qb, one_kl_one, n)

        qx, qy = float(s["xtx"].trace()), float(s["yty"].trace())            # sums of squared row norms
        xy = hsic(s["xty"], s["sx"], s["sy"], s["x_qy"], s["y_qx"], qx, qy, float(s["qxqy"]))
        xx = hsic(s["xtx"], s["sx"], s["sx"], s["x_qx"], s["x_qx"], qx, qx, float(s["qx2"]))
        yy = hsic(s["yty"], s["sy"], s["sy"], s["y_qy"], s["y_qy"], qy, qy, float(s["qy2"]))
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
    X = X - X.mean(0)                                # distances are unchanged; their expansion below cancels less
    sq_norms = X.square().sum(1)
    sq_distances = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * X @ X.T).clamp_min_(0.0)
    median = _median(sq_distances)
    if not median > 0:
        raise DataError("the median pairwise distance is 0 (most samples are identical): the RBF bandwidth is "
                        "undefined; use kernel='linear'")
    return torch.exp(-sq_distances / (2.0 * sigma**2 * median))


class Gram(NamedTuple):
    """One minibatch's Gram matrix of one layer, ``K = matrix 2^exponent``: the power of two keeps the products of
    tiny or huge activations in range (see the module notes). What :meth:`MinibatchCKAMatrix.gram` returns."""

    matrix: torch.Tensor
    exponent: int = 0


def _centred_rows(X: torch.Tensor, name: str) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``(Xc, e, mean)``: ``X`` minus its column means is ``Xc 2^e`` (``mean`` in the same units, float64).

    One pass in ``X``'s dtype makes a new tensor (the estimators ignore the rounding of the mean: a shift); ``X`` is
    scaled by a power of two first only when its column sums overflow.
    """
    mean = X.mean(0, keepdim=True)
    exponent = 0
    if not bool(torch.isfinite(mean).all()):                             # not finite, or sums beyond the dtype
        exponent = _exponent(X)
        if exponent is None:
            raise InputError(f"{name} contains NaN or infinite values")
        X = _scaled(X, exponent)
        mean = X.mean(0, keepdim=True)
    return X - mean, exponent, mean.to(torch.float64)


def _unit_rows(Xc: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """``(U, e)`` with ``Xc = U 2^e`` and ``max |U|`` in [0.5, 1) (``e`` 0 for zeros)."""
    exponent = _exponent(Xc)
    if exponent is None:
        if not bool(torch.isfinite(Xc).all()):
            raise InputError(f"{name} contains NaN or infinite values")
        return Xc, 0
    return _scaled(Xc, exponent), exponent


#: A float32 Gram matrix whose largest diagonal entry (a squared row norm) lies in [2^-80, 2^80] lost nothing to
#: underflow or overflow: a product below float32's smallest normal 2^-126 is 2^-46 below it, under its rounding.
_SAFE_GRAM = (2.0**-80, 2.0**80)


def _kernel_gram(X: torch.Tensor, kernel: str, sigma: float, name: str, dtype: torch.dtype) -> Gram:
    """The Gram matrix of one minibatch ``X`` (``n x d``): linear (``X X^T`` of the centred rows, products in
    ``dtype``) or RBF (scale-free). Zeros (linear) or ones (RBF, identical points) when ``X`` is constant up to
    the rounding of its dtype: its centred sum of squares against ``sum_i |x_i|^2``."""
    rounding = X.dtype if X.is_floating_point() else torch.float64
    Xc, exponent, mean = _centred_rows(X.to(dtype), name)
    n = X.shape[0]

    def removed(inner: int) -> float:                                    # sum |x_i|^2 = centred + n |mean|^2
        return n * float(_scaled(mean, inner).square().sum())

    if kernel == "rbf":
        Xc, inner = _unit_rows(Xc.to(torch.float64), name)
        total = float(Xc.square().sum())
        flat = _no_variance(float((Xc - Xc.mean(0)).square().sum()), total + removed(inner), rounding)
        return Gram(torch.ones(n, n, dtype=torch.float64, device=X.device) if flat else rbf_gram(Xc, sigma))
    inner = 0
    with torch.autocast(X.device.type, enabled=False):  # called from a forward hook under fp16/bf16 autocast
        K = Xc @ Xc.T
        peak = float(K.diagonal().max())
        if not _SAFE_GRAM[0] <= peak <= _SAFE_GRAM[1]:  # zero (or underflowed), huge, not finite: scale, redo
            Xc, inner = _unit_rows(Xc, name)
            K = Xc @ Xc.T
    K = K.to(torch.float64)
    total = float(K.trace())
    if _no_variance(total - float(K.sum()) / n, total + removed(inner), rounding):  # tr(H K H) vs sum |x_i|^2
        return Gram(K.zero_())
    return Gram(K, 2 * (exponent + inner))


def _biased_gram_hsic(K: torch.Tensor, L: torch.Tensor) -> float:
    """``tr(K H L H)`` (the scale (n-1)^-2 cancels in CKA)."""
    return float((_double_centred(K) * _double_centred(L)).sum())


def _double_centred(K: torch.Tensor) -> torch.Tensor:
    """``H K H``, ``H = I - 1 1'/n``."""
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()


def _unbiased_gram_hsic(K: torch.Tensor, L: torch.Tensor) -> float:
    n = K.shape[0]
    K = K.clone().fill_diagonal_(0.0)
    L = L.clone().fill_diagonal_(0.0)
    return _unbiased_hsic(float((K * L).sum()), float(K.sum()), float(L.sum()),
                          float(K.sum(1) @ L.sum(1)), n)


def cka(X: Any, Y: Any, kernel: str = "linear", unbiased: bool = False, sigma: float = 1.0, *,
        chunk_rows: int = CHUNK_ROWS) -> float:
    """CKA between representations ``X`` (``N x d_x``) and ``Y`` (``N x d_y``) of the same N samples.

    Args:
        X, Y: activations (tensors, numpy arrays or memory maps; rows in the same sample order).
        kernel: ``"linear"`` (feature space, streams rows ``chunk_rows`` at a time) or ``"rbf"`` (N x N Grams,
            at most :data:`RBF_MAX_ROWS` samples; use :class:`MinibatchCKA` beyond).
        unbiased: use the unbiased HSIC estimator (Song et al. 2012; needs N >= 4).
        sigma: RBF bandwidth as a multiple of the median pairwise distance.
        chunk_rows: rows per chunk for the linear kernel (the value does not depend on it, up to rounding).

    Returns:
        CKA (1: the same representation up to rotation and isotropic scaling): in [0, 1] for the biased estimator;
        the unbiased one is unclipped and can be slightly negative for unrelated representations.

    Raises:
        InputError: mismatched rows, too few samples, bad kernel.
        DataError: a representation is constant, up to rounding (CKA undefined).

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
    K, L = (_kernel_gram(as_matrix(Z, f"{name} (activations, samples x features)"), "rbf", sigma, name,
                         torch.float64).matrix for Z, name in ((X, "X"), (Y, "Y")))
    hsic = _unbiased_gram_hsic if unbiased else _biased_gram_hsic
    norm = n if unbiased else 1  # the unbiased HSIC is normalised by ~n^2, the biased one here is not
    x_trace, y_trace = (float(_double_centred(G).trace()) / norm for G in (K, L))
    return _ratio(hsic(K, L), hsic(K, K), hsic(L, L), x_trace**2, y_trace**2)


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


def _prepared(gram: Any, name: str) -> tuple[torch.Tensor, int | None]:
    """A minibatch Gram matrix (a :class:`Gram` or a plain ``n x n`` matrix) double-centred in float64, which the
    unbiased HSIC does not depend on (module notes), and scaled: ``(M, e)`` with ``H K H = M 2^e``, ``max |M| < 1``;
    zeros and None when ``K`` is constant up to rounding (its centred trace against its trace)."""
    matrix, exponent = (gram.matrix, gram.exponent) if isinstance(gram, Gram) else (gram, 0)
    matrix = to_tensor(matrix, name)
    if matrix.ndim != 2 or matrix.is_complex():
        raise InputError(f"{name} must be a real n x n Gram matrix, got shape {tuple(matrix.shape)}")
    rounding = matrix.dtype if matrix.is_floating_point() else torch.float64
    M = matrix.to(torch.float64)
    first = _exponent(M)
    if first is None:
        if M.numel() and not bool(torch.isfinite(M).all()):
            raise InputError(f"{name} contains NaN or infinite values")
        return torch.zeros_like(M), None
    M = _scaled(M, first)
    centred = _double_centred(M)
    if _no_variance(float(centred.trace()), float(M.trace()), rounding):
        return centred.zero_(), None
    inner = _exponent(centred)
    return centred.mul_(2.0**-inner), exponent + first + inner


class MinibatchCKAMatrix:
    """The paper's CKA between every layer of a model a and every layer of a model b, streamed over minibatches,
    as PyTorch-Model-Compare (``torch_cka``, used by Crabbé et al., App. B) computes it.

    For each minibatch of the same ``n >= 4`` samples through both models, each layer output is flattened
    (``flatten(1)``: every token or spatial position, not pooled), its linear Gram matrix ``K = X X^T`` formed and
    its diagonal zeroed, and the unbiased HSIC of Song et al. (2012) taken,
    ``HSIC(K, L) = [tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))``. Then
    ``CKA[i, j] = sum_b HSIC(K_ib, L_jb) / sqrt(sum_b HSIC(K_ib, K_ib) * sum_b HSIC(L_jb, L_jb))``, unclipped
    (slightly negative near independence, as torch_cka gives it).

    Only the ``n x n`` Gram matrices of the current minibatch are held: never a dataset's flattened activations.
    Each minibatch is centred by its column means before its Gram product (the HSIC is unchanged, the float32
    rounding of large activation means is gone; see the module notes). Gram products run in float32 (float64 for
    float64 inputs), as the model runs; the HSIC terms and their sums in float64, each layer in units of the largest
    power of two its minibatches have brought so far (torch_cka keeps float32 sums: the two agree to about 1e-6).

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
        self.batches = 0
        self.samples = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._exponents: dict[int, int] = {}   # per layer (a's, then b's): the units of the sums

    def gram(self, side: str, index: int, x: Any) -> Gram:
        """The linear Gram matrix of one minibatch of layer ``index`` of model ``side`` (``"a"`` or ``"b"``):
        ``X X^T`` (``n x n``, float64, as a :class:`Gram`) of ``X = x.flatten(1)`` centred by its column means.
        Compute it as soon as a layer's output is known (a forward hook) and pass it to :meth:`update_grams`; the
        flattened output can then be freed."""
        if side not in ("a", "b"):
            raise InputError(f"side must be 'a' or 'b', got {side!r}")
        name = f"layer {index} of model {side}"
        X = _layers(x, name)[0].flatten(1)                       # bf16 outputs: products in float32, bf16 rounding
        return _kernel_gram(X, "linear", 1.0, name, torch.float64 if X.dtype == torch.float64 else torch.float32)

    def update(self, X: Any, Y: Any) -> None:
        """Add one minibatch: ``X`` the layer outputs of model a (a tensor ``(n, ...)`` or a sequence of them, one
        per layer), ``Y`` those of model b, for the same ``n >= 4`` samples in the same order."""
        xs, ys = _layers(X, "X"), _layers(Y, "Y")
        self.update_grams([self.gram("a", i, x) for i, x in enumerate(xs)],
                          [self.gram("b", j, y) for j, y in enumerate(ys)])

    def update_grams(self, K: Sequence[Any], L: Sequence[Any]) -> None:
        """Add one minibatch given as Gram matrices: ``K`` one ``n x n`` matrix per layer of model a, ``L`` one per
        layer of model b (each a :class:`Gram` from :meth:`gram`, or a plain matrix ``X X^T``)."""
        if not K or not L:
            raise InputError("K and L must be non-empty sequences of n x n Gram matrices, one per layer")
        prepared = [_prepared(g, f"{side}[{i}]") for side, grams in (("K", K), ("L", L)) for i, g in enumerate(grams)]
        n = prepared[0][0].shape[0]
        if any(M.shape != (n, n) for M, _ in prepared):
            raise InputError(f"K and L must be n x n Gram matrices of the same n samples, got shapes "
                             f"{[tuple(M.shape) for M, _ in prepared]}")
        if n < MIN_UNBIASED_ROWS:
            raise InputError(f"a minibatch needs at least {MIN_UNBIASED_ROWS} samples for the unbiased HSIC "
                             f"estimator, got {n}; drop or merge the last short batch")
        if self._sums and (len(K), len(L)) != tuple(self._sums["xy"].shape):
            raise InputError(f"every minibatch must give the same layers: {tuple(self._sums['xy'].shape)} so far, "
                             f"now {len(K)} and {len(L)}")
        grams = [M for M, _ in prepared]
        scale = torch.stack([(g.diagonal().sum() / n) ** 2 for g in grams])  # for the constant check of _values
        for g in grams:
            g.fill_diagonal_(0.0)
        rows = torch.stack([g.sum(1) for g in grams])                         # K 1 per layer
        sums, flat = rows.sum(1), torch.stack([g.reshape(-1) for g in grams])
        a = len(K)
        tr_kl = flat[:a] @ flat[a:].T                                          # tr(K L) = <K, L> (symmetric)
        self_tr = flat.square().sum(1)
        one_kl_one = rows[:a] @ rows[a:].T
        self._add({"xy": _unbiased_hsic(tr_kl, sums[:a, None], sums[None, a:], one_kl_one, n),
                   "self": _unbiased_hsic(self_tr, sums, sums, rows.square().sum(1), n), "scale": scale},
                  [exponent for _, exponent in prepared])
        self.batches += 1
        self.samples += n

    def _add(self, terms: dict[str, torch.Tensor], exponents: list[int | None]) -> None:
        """Add one minibatch's HSIC terms (layer ``k``'s Gram in units ``2^exponents[k]``) to the sums, in the units
        of each layer's largest power of two so far (the sums are rescaled when a larger one arrives)."""
        if not self._sums:
            self._sums = {key: torch.zeros_like(value) for key, value in terms.items()}
        sums, a = self._sums, terms["xy"].shape[0]
        for k, exponent in enumerate(exponents):
            grown = _raise_exponent(self._exponents, k, exponent)
            if grown:                                                        # exact powers of two (see the notes)
                sums["self"][k] *= 2.0 ** (-2 * grown)
                sums["scale"][k] *= 2.0 ** (-2 * grown)
                (sums["xy"][k] if k < a else sums["xy"][:, k - a]).mul_(2.0**-grown)
        factor = torch.tensor([0.0 if e is None else 2.0 ** (e - self._exponents[k]) for k, e in enumerate(exponents)],
                              dtype=torch.float64, device=terms["xy"].device)
        sums["xy"] += terms["xy"] * factor[:a, None] * factor[None, a:]
        sums["self"] += terms["self"] * factor.square()
        sums["scale"] += terms["scale"] * factor.square()

    def _values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CKA (``len(K) x len(L)``, NaN where undefined) and, per layer (a's, then b's), whether it is constant
        over every minibatch (up to rounding)."""
        if not self.batches:
            raise InputError("no minibatch was given: call update(X, Y) before compute()")
        xy, own, scale = self._sums["xy"], self._sums["self"], self._sums["scale"]
        a = xy.shape[0]
        if not bool(torch.isfinite(own).all()):
            raise InputError("the layer outputs contain NaN or infinite values")
        constant = ~(own > _CONSTANT * scale)
        root = own.clamp_min(0.0).sqrt()
        values = xy / root[:a, None] / root[None, a:]
        return values.masked_fill(constant[:a, None] | constant[None, a:], float("nan")), constant

    def compute(self) -> torch.Tensor:
        """CKA of every layer of a (rows) with every layer of b (columns), float64, unclipped; NaN, with a warning,
        where a layer is constant over every minibatch (CKA undefined)."""
        values, _ = self._values()
        undefined = values.isnan()
        if bool(undefined.any()):
            pairs = [tuple(pair) for pair in undefined.nonzero().tolist()]
            warnings.warn(f"CKA is undefined (NaN) for {len(pairs)} layer pair(s) (a, b) {pairs[:6]}"
                          f"{' ...' if len(pairs) > 6 else ''}: a layer is constant over the samples",
                          RuntimeWarning, stacklevel=2)
        return values


def _one_pair(accumulator: MinibatchCKAMatrix) -> float:
    """The single CKA value of a one-layer-per-side accumulator, or a DataError naming the constant side."""
    values, constant = accumulator._values()
    for k, name in enumerate("XY"):
        if bool(constant[k]):
            raise _constant(name)
    return float(values[0, 0])


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021): unbiased HSIC of each minibatch, summed over minibatches.

    ``CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))``: a consistent
    estimate from batches of any size >= 4 (smaller batches are refused: the unbiased estimator divides by
    ``n - 3``). The result is unclipped (slightly negative near independence) and never NaN; a representation that
    is constant over every batch raises :class:`~robustsig.errors.DataError` (CKA undefined). With the linear
    kernel it is :class:`MinibatchCKAMatrix` for one pair of 2-D representations, Gram products in float64.

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
        self._pairs = MinibatchCKAMatrix()

    @property
    def batches(self) -> int:
        """Minibatches seen."""
        return self._pairs.batches

    def update(self, X: Any, Y: Any) -> None:
        """Add one minibatch: ``X`` (``n x d_x``) and ``Y`` (``n x d_y``) for the same ``n >= 4`` samples."""
        X = as_matrix(X, "X (activations, samples x features)")
        Y = as_matrix(Y, "Y (activations, samples x features)")
        if X.shape[0] != Y.shape[0]:
            raise InputError(f"X and Y must hold the same samples: {X.shape[0]} and {Y.shape[0]} rows")
        if X.shape[0] < MIN_UNBIASED_ROWS:
            raise InputError(f"a minibatch needs at least {MIN_UNBIASED_ROWS} samples for the unbiased HSIC "
                             f"estimator, got {X.shape[0]}; drop or merge the last short batch")
        self._pairs.update_grams([_kernel_gram(X, self.kernel, self.sigma, "X", torch.float64)],
                                 [_kernel_gram(Y, self.kernel, self.sigma, "Y", torch.float64)])

    def compute(self) -> float:
        """CKA over the minibatches seen (unclipped)."""
        return _one_pair(self._pairs)


def minibatch_cka(X: Any, Y: Any, batch_size: int = PAPER_MINIBATCH) -> float:
    """The paper's CKA (``torch_cka``'s estimator, see :class:`MinibatchCKAMatrix`) between two layer outputs.

    Args:
        X, Y: outputs of one layer of each model for the same N samples, ``(N, ...)`` (flattened per sample).
        batch_size: samples per minibatch; consecutive rows form the minibatches, and a last minibatch of fewer
            than 4 rows is left out (with a warning: the unbiased HSIC is undefined on it).

    Returns:
        CKA, unclipped: 1 for the same representation up to rotation and scale, slightly negative near
        independence (as torch_cka gives it).

    Raises:
        InputError: mismatched rows, ``batch_size`` below 4, non-finite values.
        DataError: a representation is constant, up to rounding (CKA undefined).

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
    return _one_pair(accumulator)
