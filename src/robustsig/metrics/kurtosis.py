"""Activation kurtosis (eq. 2 of Crabbé et al.) and the feature dimensions that carry outlier activations.

For one activation vector ``h`` (``d`` components) the kurtosis is the mean of the fourth power of its
standardized components, ``mean_i ((h_i - mean(h)) / std(h))**4`` with the population standard deviation
(Pearson's definition: a Gaussian vector gives 3). The activation kurtosis of a set is the mean over its
vectors. Heavy-tailed components (outlier features) push it far above 3.

A vector whose standard deviation is at most one rounding unit of its mean (``std <= eps * |mean|``, ``eps`` of
the input's dtype; exactly constant vectors included) has no kurtosis: its deviations are rounding noise (the
catastrophic cancellation for which ``scipy.stats.kurtosis`` returns NaN, by the same test). Such vectors are left
out of the mean with a warning, and the result is NaN when no vector is left. Every other vector's kurtosis is
computed in float64 from deviations centred twice (the second pass removes the rounding of the mean) and scaled by
their largest magnitude, so it is exact to rounding where scipy's one pass is not: for ``1e8 + [0, 1, 0, 0, 0]``
scipy is 1.4e-8 off and for ``3e15 + [0, 1, 2, 0, 8]`` 17 % off; and activations of magnitude 1e-100 or 1e90 do
not underflow or overflow their fourth powers.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import CHUNK_ROWS, as_matrix, iter_rows, to_tensor
from robustsig.metrics._ranking import above_mean

#: Default outlier threshold: a dimension whose mean |h_i| is at least this many times the average over dims.
OUTLIER_FACTOR = 5.0


class OutlierDimensions(NamedTuple):
    """Feature dimensions with outlier activations, most extreme first.

    Attributes:
        indices: the outlier dimensions (int64), sorted by decreasing score.
        scores: their scores, ``mean_n |h_ni| / mean_j mean_n |h_nj|`` (float64).
        factor: the threshold the scores passed (``score >= factor``).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    factor: float


def _row_kurtosis(h: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson kurtosis of every row of ``h`` (float64), and whether the row has one (see the module notes)."""
    mean = h.mean(dim=1, keepdim=True)
    centered = h - mean
    centered -= centered.mean(dim=1, keepdim=True)           # the rounding of the mean, removed
    spread = centered.abs().amax(dim=1, keepdim=True)
    unit = centered / torch.where(spread > 0, spread, 1.0)   # kurtosis is scale-free; no under/overflow below
    m2 = unit.square().mean(dim=1)
    m4 = unit.square().square().mean(dim=1)
    valid = m2.sqrt() * spread[:, 0] > eps * mean[:, 0].abs()  # scipy's NaN test, m2 <= (eps mean)^2, on the std
    return m4 / torch.where(valid, m2, 1.0).square(), valid


class KurtosisAccumulator:
    """Streaming activation kurtosis (eq. 2) plus the per-dimension magnitudes behind outlier dimensions.

    Feed activation batches (``N_b x d``) to :meth:`update`; :meth:`compute` equals :func:`activation_kurtosis`
    on all rows at once and :meth:`outlier_dimensions` equals :func:`outlier_dimensions`. Statistics are in
    float64. A constant vector (up to rounding, see the module notes) has no kurtosis: it is left out of the mean
    with a warning.

    Example:
        >>> import torch
        >>> acc = KurtosisAccumulator()
        >>> for batch in torch.randn(4000, 256, dtype=torch.float64).split(1000):
        ...     acc.update(batch)
        >>> round(acc.compute(), 1)
        3.0
    """

    def __init__(self) -> None:
        self._kurtosis_sum = 0.0
        self._vectors = 0
        self._constant = 0
        self._abs_sum: torch.Tensor | None = None
        self._rows = 0

    def update(self, h: Any) -> None:
        """Add a batch of activation vectors ``h`` (``N_b x d``)."""
        name = "h (activations, samples x features)"
        h = to_tensor(h, name)
        eps = torch.finfo(h.dtype if h.is_floating_point() else torch.float64).eps  # the input's rounding unit
        h = as_matrix(h, name, dtype=torch.float64, columns=None if self._abs_sum is None else self._abs_sum.shape[0])
        kurtosis, valid = _row_kurtosis(h, eps)
        self._kurtosis_sum += float(kurtosis[valid].sum())
        self._vectors += int(valid.sum())
        self._constant += int((~valid).sum())
        abs_sum = h.abs().sum(dim=0)
        self._abs_sum = abs_sum if self._abs_sum is None else self._abs_sum + abs_sum
        self._rows += h.shape[0]

    def compute(self) -> float:
        """The mean kurtosis of the vectors seen so far (NaN with a warning when there is none)."""
        if self._constant:
            warnings.warn(f"{self._constant} activation vector(s) are constant (a standard deviation of at most one "
                          "rounding unit of their mean: catastrophic cancellation, where scipy.stats.kurtosis gives "
                          "NaN) and have no kurtosis; they are left out of the mean", RuntimeWarning, stacklevel=2)
        if self._vectors == 0:
            warnings.warn("no non-constant activation vector was seen: kurtosis is undefined (NaN)",
                          RuntimeWarning, stacklevel=2)
            return float("nan")
        return self._kurtosis_sum / self._vectors

    @property
    def rows(self) -> int:
        """Number of activation vectors seen (constant ones included)."""
        return self._rows

    def mean_abs(self) -> torch.Tensor:
        """Mean absolute activation of every feature dimension over the rows seen (float64, length ``d``)."""
        if self._abs_sum is None:
            raise InputError("no activations were given: call update(h) before asking for statistics")
        return self._abs_sum / self._rows

    def outlier_dimensions(self, factor: float = OUTLIER_FACTOR) -> OutlierDimensions:
        """The dimensions whose mean |activation| is at least ``factor`` times the mean over all dimensions."""
        mean_abs = self.mean_abs()
        indices, scores = above_mean(mean_abs, factor)
        if mean_abs.mean() == 0:
            warnings.warn("every activation is zero: no dimension can be an outlier", RuntimeWarning, stacklevel=2)
        return OutlierDimensions(indices, scores, float(factor))


def _accumulate(h: Any, chunk_rows: int) -> KurtosisAccumulator:
    acc = KurtosisAccumulator()
    for _, chunk in iter_rows(h, chunk_rows):
        acc.update(chunk)
    if acc.rows == 0:
        raise InputError("h (activations) has no rows")
    return acc


def activation_kurtosis(h: Any, *, chunk_rows: int = CHUNK_ROWS) -> float:
    """Activation kurtosis of a set of vectors (eq. 2): the mean over rows of each row's Pearson kurtosis.

    Args:
        h: activations, ``N x d`` (tensor, numpy array or memory map; read ``chunk_rows`` rows at a time).
        chunk_rows: rows per chunk.

    Returns:
        The mean kurtosis (3 for Gaussian vectors; far above 3 with outlier features).

    Example:
        >>> import torch
        >>> h = torch.randn(2000, 512, dtype=torch.float64)
        >>> round(activation_kurtosis(h), 1)
        3.0
        >>> h[:, 7] += 40.0   # one outlier feature
        >>> activation_kurtosis(h) > 100
        True
    """
    return _accumulate(h, chunk_rows).compute()


def outlier_dimensions(h: Any, factor: float = OUTLIER_FACTOR, *, chunk_rows: int = CHUNK_ROWS) -> OutlierDimensions:
    """Feature dimensions that carry outlier activations.

    The score of dimension ``i`` is its mean absolute activation over the set relative to the mean of that
    quantity over all dimensions, ``mean_n |h_ni| / mean_j mean_n |h_nj|``; dimensions scoring at least
    ``factor`` are outliers.

    Args:
        h: activations, ``N x d``.
        factor: threshold on the score (default 5: five times the average magnitude).
        chunk_rows: rows per chunk.

    Returns:
        :class:`OutlierDimensions` ``(indices, scores, factor)``, most extreme first.

    Example:
        >>> import torch
        >>> h = torch.randn(1000, 64)
        >>> h[:, 3] += 30.0
        >>> outlier_dimensions(h).indices.tolist()
        [3]
    """
    return _accumulate(h, chunk_rows).outlier_dimensions(factor)
