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
