"""How often one direction's AP reaches a level under a random relabelling: a rigorous upper bound.

Under the label-permutation null the positives of a concept's set are a uniformly random subset of ``P`` of its
``N`` images. For a direction without ties, ``P * AP = sum over positions i of o_i c_i / (i + 1)`` (``o`` the
labels in the direction's order, ``c`` their running count) depends only on which ranks the positives take, so its
distribution is the same for every tie-free direction of every concept with the same ``(N, P)``: one computation
serves them all (and every model of a study, which tests the same sets). The max over directions depends on the
directions' joint ranks and is *not* shared; the union bound over directions holds whatever that dependence is.

The bound is Chernoff's, ``P(S >= s) <= E[exp(lambda S)] exp(-lambda s)`` at the best of 16 values of lambda,
with the moment generating function computed exactly by a dynamic programme over positions and running counts
(the count after ``m`` positions is hypergeometric). The programme keeps only the counts within Hoeffding's bound
for sampling without replacement (``|c_m - m P / N| < t_m`` fails with probability at most 1e-24 per position),
and adds the mass it drops to the bound: ``P(S >= s) <= exp(-lambda s) E[exp(lambda S); kept] + P(dropped)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_ETA = 1e-24
"""Hoeffding tail per side and position of the counts the programme drops."""
_Z = np.geomspace(1.0, 48.0, 16)
"""lambda at these multiples of 1 / sd(S): Chernoff's optimum for tails from about 1 to 40 standard deviations."""


def _band(n: int, positives: int, m: int) -> tuple[int, int]:
    """The running counts after ``m`` positions that the programme keeps (all that are possible when small)."""
    low, high = max(0, positives - (n - m)), min(positives, m)
    half = math.sqrt(min(m, n - m) * math.log(2 / _ETA) / 2)
    centre = m * positives / n
    return max(low, math.ceil(centre - half)), min(high, math.floor(centre + half))


@functools.lru_cache(maxsize=512)
def _moments(n: int, positives: int) -> tuple[float, float]:
    """Mean and standard deviation of ``S = P * AP`` for one tie-free direction under a random relabelling."""
    low, mass, first, second = 0, np.ones(1), np.zeros(1), np.zeros(1)
    for i in range(n):
        counts = np.arange(low, low + len(mass))
        p = (positives - counts) / (n - i)
        step = (counts + 1) / (i + 1)
        new = [np.zeros(len(mass) + 1) for _ in range(3)]
        for k, (stay, move) in enumerate(((mass * (1 - p), mass * p),
                                          (first * (1 - p), (first + step * mass) * p),
                                          (second * (1 - p), (second + 2 * step * first + step**2 * mass) * p))):
            new[k][:-1] += stay
            new[k][1:] += move
        kept_low, kept_high = _band(n, positives, i + 1)
        mass, first, second = (a[kept_low - low:kept_high - low + 1] for a in new)
        low = kept_low
    total = float(mass.sum())
    mean = float(first.sum()) / total
    return mean, math.sqrt(max(float(second.sum()) / total - mean**2, 1e-300))


@functools.lru_cache(maxsize=512)
def _log_mgf(n: int, positives: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(lambdas, log E[exp(lambda S); counts kept], mass dropped)`` for one tie-free direction."""
    lambdas = _Z / _moments(n, positives)[1]
    rate = lambdas[:, None]
    low, weight, log_scale, dropped = 0, np.ones((len(lambdas), 1)), np.zeros(len(lambdas)), 0.0
    for i in range(n):
        counts = np.arange(low, low + weight.shape[1])
        p = (positives - counts) / (n - i)
        new = np.zeros((weight.shape[0], weight.shape[1] + 1))
        new[:, :-1] = weight * (1 - p)
        new[:, 1:] += weight * p * np.exp(rate * ((counts + 1) / (i + 1)))
        kept_low, kept_high = _band(n, positives, i + 1)
        if kept_low > max(0, positives - (n - i - 1)) or kept_high < min(positives, i + 1):
            dropped += 2 * _ETA
        weight = new[:, kept_low - low:kept_high - low + 1]
        low = kept_low
        top = weight.max(axis=1)
        weight = weight / top[:, None]
        log_scale += np.log(top)
    return lambdas, log_scale + np.log(weight[:, positives - low]), dropped


def ap_tail_bound(n: int, positives: int, levels: np.ndarray) -> np.ndarray:
    """Upper bounds on ``P(AP >= level)`` for one direction without ties, for each of ``levels``, when
    ``positives`` of its ``n`` samples are drawn uniformly at random (the label-permutation null).

    >>> float(ap_tail_bound(20, 10, np.array([1.0]))[0]) >= 1 / math.comb(20, 10)   # AP 1: the top 10
    True
    """
    levels = np.asarray(levels, dtype=np.float64)
    lambdas, log_mgf, dropped = _log_mgf(n, positives)
    exponent = np.min(log_mgf[:, None] - lambdas[:, None] * positives * levels.reshape(1, -1), axis=0)
    bound = np.minimum(1.0, np.exp(exponent) * (1 + 1e-9) + dropped)
    return np.where(levels.reshape(-1) <= 0, 1.0, bound).reshape(levels.shape)
