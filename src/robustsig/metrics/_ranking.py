"""Entries that stand out from the mean: privileged directions and outlier dimensions share this rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robustsig.errors import InputError

_FLOAT32_EXACT = 2**24
"""Integers of at most this magnitude are exact in float32 (and 2**53 in float64)."""


def above_mean(values: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the entries of a non-negative vector that are at least ``factor`` times its mean, and their
    ratios to the mean, sorted by decreasing ratio (ties in index order). Both are empty when the mean is 0.

    >>> above_mean(torch.tensor([1.0, 9.0, 1.0, 1.0]), 2.0)
    (tensor([1]), tensor([3.]))
    """
    if factor <= 0:
        raise InputError(f"factor must be positive, got {factor}")
    mean = values.mean()
    if mean == 0:
        empty = torch.empty(0, dtype=torch.int64, device=values.device)
        return empty, empty.to(values.dtype)
    ratios = values / mean
    indices = (ratios >= factor).nonzero().flatten()
    order = ratios[indices].argsort(descending=True, stable=True)
    return indices[order], ratios[indices[order]]


def tie_groups(tied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, end)``: for every position of sorted rows, the first and last position of its group of equal
    values, from ``tied`` (``... x (W - 1)`` booleans: entry i equals entry i + 1). The AP kernels count a tie
    group as one threshold, as ``sklearn.metrics.average_precision_score`` does.

    >>> tie_groups(torch.tensor([[False, True, True, False]]))
    (tensor([[0, 1, 1, 1, 4]]), tensor([[0, 3, 3, 3, 4]]))
    """
    width = tied.shape[-1] + 1
    index = torch.arange(width, device=tied.device)
    bound = torch.ones(tied.shape[:-1] + (1,), dtype=torch.bool, device=tied.device)
    is_start = torch.cat([bound, ~tied], -1)
    is_end = torch.cat([~tied, bound], -1)
    start = torch.where(is_start, index, 0).cummax(-1).values
    end = torch.where(is_end, index, width - 1).flip(-1).cummin(-1).values.flip(-1)
    return start, end


def rank_exact_scores(x: Any) -> Any:
    """Scores with every pair of distinct values still distinct in floating point: AP and its permutation null
    depend on the scores only through their order and ties, as in ``sklearn.metrics.average_precision_score``,
    which ranks integers in their own dtype.

    Integer (and unsigned) scores become float32 when it holds them exactly (magnitudes up to 2**24), float64
    when that does (up to 2**53), else their per-column ranks among the distinct values (float64; the order and the
    ties are those of the integers). Anything else is returned unchanged (float16 and bfloat16 widen exactly).

    >>> rank_exact_scores(np.array([[2**24], [2**24 + 1]])).dtype
    dtype('float64')
    """
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            return x
        return torch.from_numpy(np.asarray(rank_exact_scores(x.cpu().numpy()))).to(x.device)
    array = x if isinstance(x, np.ndarray) else None
    if array is None:
        try:
            array = np.asarray(x)
        except (TypeError, ValueError):
            return x                      # the caller's validation names the problem
    if not np.issubdtype(array.dtype, np.integer):
        return x
    if array.size == 0 or (int(array.min()) >= -_FLOAT32_EXACT and int(array.max()) <= _FLOAT32_EXACT):
        return array.astype(np.float32)
    if int(array.min()) >= -2**53 and int(array.max()) <= 2**53:
        return array.astype(np.float64)
    if array.ndim != 2:
        return x
    ranks = np.empty(array.shape, dtype=np.float64)
    for d in range(array.shape[1]):     # numpy ranks uint64 and int64 alike (torch has no uint64 sort)
        ranks[:, d] = np.unique(array[:, d], return_inverse=True)[1].reshape(-1)
    return ranks
