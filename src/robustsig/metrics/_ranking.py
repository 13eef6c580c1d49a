"""Entries that stand out from the mean: privileged directions and outlier dimensions share this rule."""

from __future__ import annotations

import torch

from robustsig.errors import InputError


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
