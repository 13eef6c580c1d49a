"""Privileged directions of a linear head (eq. 3 and 4 of Crabbé et al.).

The head ``W`` (``classes x features``) is decomposed as ``W = sum_i s_i u_i v_i^T`` (eq. 3). The importance
of singular direction ``i`` for a set of activations ``h_n`` is (eq. 4)::

    Importance(i) = s_i / sum_j s_j * mean_n |cos(v_i, h_n)|

A *privileged direction* is one whose importance is at least ``factor`` times the mean importance over all
directions (default 5): a few such directions dominate the head of robust models. A random head on isotropic
activations has no direction above ~2.5 times the mean, so the default flags only real structure.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import CHUNK_ROWS, as_matrix, as_vector, compute_dtype, iter_rows
from robustsig.metrics._ranking import above_mean

#: Default threshold of :func:`privileged_directions`, in multiples of the mean importance.
PRIVILEGED_FACTOR = 5.0


class HeadSVD(NamedTuple):
    """Thin SVD of a head, ``W = U diag(s) V^T``, in float64.

    Attributes:
        s: singular values, descending (length ``r = min(classes, features)``).
        U: left singular vectors as columns, ``classes x r``.
        V: right singular vectors as columns, ``features x r`` (the directions ``v_i`` in feature space).
    """

    s: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor

    @property
    def rank(self) -> int:
        """Number of singular directions ``r``."""
        return int(self.s.shape[0])


def head_svd(W: Any) -> HeadSVD:
    """Singular value decomposition of a linear head (eq. 3), computed in float64.

    Singular vectors are defined up to sign; this fixes it (the largest-magnitude entry of every ``v_i`` is
    positive) so results are reproducible across runs and devices.

    Args:
        W: head weight, ``classes x features``.

    Returns:
        :class:`HeadSVD` ``(s, U, V)`` with ``s`` descending and ``W ~= U @ diag(s) @ V.T``.

    Example:
        >>> import torch
        >>> W = torch.randn(10, 32, dtype=torch.float64)
        >>> s, U, V = head_svd(W)
        >>> torch.allclose(U @ torch.diag(s) @ V.T, W)
        True
    """
    W = as_matrix(W, "W (head weight, classes x features)", dtype=torch.float64)
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    V = Vh.T
    pivot = V.abs().argmax(dim=0)
    signs = torch.sign(V[pivot, torch.arange(V.shape[1], device=V.device)])
    signs[signs == 0] = 1.0
    return HeadSVD(s, U * signs, V * signs)


def as_head_svd(W: Any) -> HeadSVD:
    """``W`` itself when it already is a :class:`HeadSVD`, else :func:`head_svd` of it."""
    return W if isinstance(W, HeadSVD) else head_svd(W)


class ImportanceAccumulator:
    """Streaming direction importance (eq. 4): feed activation batches, get the importance of every direction.

    Projections run in float32 (float64 when ``h`` is float64) on ``h``'s device; the norms of ``h`` are float64
    sums of squares and the mean |cosine| accumulates in float64. A zero activation vector has no direction: it
    is left out of the mean with a warning.

    Args:
        W: head weight (``classes x features``) or its :class:`HeadSVD` (to reuse a decomposition).

    Example:
        >>> import torch
        >>> W, h = torch.randn(10, 32), torch.randn(500, 32)
        >>> acc = ImportanceAccumulator(W)
        >>> for batch in h.split(100):
        ...     acc.update(batch)
        >>> torch.allclose(acc.compute(), direction_importance(W, h))
        True
    """

    def __init__(self, W: Any) -> None:
        self.svd = as_head_svd(W)
        self._abs_cos_sum = torch.zeros_like(self.svd.s)
        self._vectors = 0
        self._zero = 0

    def update(self, h: Any) -> None:
        """Add a batch of activations ``h`` (``N_b x features``)."""
        h = as_matrix(h, "h (activations, samples x features)", columns=self.svd.V.shape[0])
        V = self.svd.V.to(device=h.device, dtype=compute_dtype(h))
        projections = (h @ V).to(torch.float64)
        norms = h.to(torch.float64).square().sum(dim=1).sqrt()
        valid = norms > 0
        cosines = projections[valid] / norms[valid, None]
        self._abs_cos_sum = self._abs_cos_sum.to(h.device) + cosines.abs().sum(dim=0)
        self._vectors += int(valid.sum())
        self._zero += int((~valid).sum())

    @property
    def zero_vectors(self) -> int:
        """Number of all-zero activation vectors seen (left out of the mean: they have no direction)."""
        return self._zero

    def mean_abs_cosine(self) -> torch.Tensor:
        """``mean_n |cos(v_i, h_n)|`` for every direction, in the order of :func:`head_svd` (float64)."""
        if self._zero:
            warnings.warn(f"{self._zero} activation vector(s) are zero and have no direction; they are left out",
                          RuntimeWarning, stacklevel=2)
        if self._vectors == 0:
            raise InputError("no non-zero activation vector was given: importance is undefined")
        return self._abs_cos_sum / self._vectors

    def compute(self) -> torch.Tensor:
        """Importance of every singular direction (eq. 4), in the order of :func:`head_svd` (float64)."""
        s = self.svd.s.to(self._abs_cos_sum.device)
        return s / s.sum() * self.mean_abs_cosine()


def direction_importance(W: Any, h: Any, *, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Importance of each singular direction of the head ``W`` for the activations ``h`` (eq. 4).

    Args:
        W: head weight ``classes x features``, or its :class:`HeadSVD`.
        h: activations ``N x features`` (tensor, numpy array or memory map; streamed ``chunk_rows`` at a time).
        chunk_rows: rows per chunk.

    Returns:
        float64 tensor of length ``rank``, in the order of :func:`head_svd` (descending singular values).

    Example:
        >>> import torch
        >>> imp = direction_importance(torch.randn(10, 32), torch.randn(200, 32))
        >>> imp.shape
        torch.Size([10])
    """
    acc = ImportanceAccumulator(W)
    for _, chunk in iter_rows(h, chunk_rows):
        acc.update(chunk)
    return acc.compute()


def importance_spearman(singular_values: Any, importance: Any) -> float:
    """Spearman rank correlation between singular values and importances (the paper reports 0.96).

    Args:
        singular_values: ``s`` from :func:`head_svd`.
        importance: from :func:`direction_importance`, same order and length.

    Returns:
        The correlation (ties get average ranks); NaN with a warning when either input is constant.

    Example:
        >>> importance_spearman([3.0, 2.0, 1.0], [0.5, 0.4, 0.1])
        1.0
    """
    from scipy.stats import spearmanr

    s = as_vector(singular_values, "singular_values").cpu()
    imp = as_vector(importance, "importance", length=s.shape[0]).cpu()
    if s.shape[0] < 2:
        raise InputError("the Spearman correlation needs at least 2 directions")
    if bool((s == s[0]).all()) or bool((imp == imp[0]).all()):
        warnings.warn("singular values or importances are all equal: their rank correlation is undefined (NaN)",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(spearmanr(s.numpy(), imp.numpy()).statistic)


class PrivilegedDirections(NamedTuple):
    """Directions whose importance is at least ``factor`` times the mean importance, most important first.

    Attributes:
        indices: direction indices (in the order of :func:`head_svd`), int64.
        ratios: their importance divided by the mean importance (float64).
        factor: the threshold used.
    """

    indices: torch.Tensor
    ratios: torch.Tensor
    factor: float


def privileged_directions(importance: Any, factor: float = PRIVILEGED_FACTOR) -> PrivilegedDirections:
    """Privileged directions: importance at least ``factor`` times the mean importance over all directions.

    Args:
        importance: importance of every direction (from :func:`direction_importance`).
        factor: threshold in multiples of the mean (default 5).

    Returns:
        :class:`PrivilegedDirections` ``(indices, ratios, factor)``, sorted by decreasing importance.

    Example:
        >>> privileged_directions([0.01, 0.9, 0.02, 0.01, 0.01, 0.02, 0.01, 0.02]).indices.tolist()
        [1]
    """
    imp = as_vector(importance, "importance")
    if imp.numel() == 0 or bool((imp < 0).any()):
        raise InputError("importance must be a non-empty vector of non-negative values")
    return PrivilegedDirections(*above_mean(imp, factor), float(factor))


def importance_concentration(importance: Any, top: float = 0.2) -> float:
    """The share of the total importance held by the ``top`` fraction of most important directions (at least one
    direction): 0.2 when importance is spread evenly and ``top`` is 0.2, near 1 when a few directions are privileged.

    Example:
        >>> importance_concentration([0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0])
        0.6
    """
    imp = as_vector(importance, "importance")
    if imp.numel() == 0 or bool((imp < 0).any()) or float(imp.sum()) == 0:
        raise InputError("importance must be a non-empty vector of non-negative values, not all zero")
    if not 0 < top <= 1:
        raise InputError(f"top must be a fraction in (0, 1]; got {top}")
    count = max(1, round(top * imp.numel()))
    return float(imp.sort(descending=True).values[:count].sum() / imp.sum())
