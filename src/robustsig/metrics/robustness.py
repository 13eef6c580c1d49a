"""Effective robustness (eq. 1 of Crabbé et al., after Taori et al. 2020) and the baseline line it is measured from.

``ER = ACC(S) - sigmoid(b1 * logit(ACC(I)) + b0)``: the shift accuracy a model has beyond what the baseline
line predicts from its in-distribution accuracy. ``ACC(I)`` is the ImageNet validation accuracy and ``ACC(S)``
the mean accuracy over :data:`SHIFT_SETS`. The paper's line is ``b1 = 0.76, b0 = -1.49``; :func:`fit_baseline`
refits it (least squares of ``logit(ACC(S))`` on ``logit(ACC(I))``) from a table of baseline models.

Accuracies are fractions. ``ACC(I)`` and every accuracy given to :func:`fit_baseline` must lie strictly inside
(0, 1), where the logit is finite; ``ACC(S)`` enters eq. 1 untransformed, so 0 and 1 are accepted there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from robustsig.errors import InputError

#: The paper's baseline line (slope and intercept on logit axes).
PAPER_B1, PAPER_B0 = 0.76, -1.49

#: The five distribution shifts averaged into ACC(S), by dataset kind name.
SHIFT_SETS: tuple[str, ...] = ("imagenet-v2", "imagenet-r", "imagenet-sketch", "objectnet", "imagenet-a")


def _accuracies(values: Any, name: str, *, open_interval: bool) -> np.ndarray:
    """``values`` as a float64 array of fractions, or an :class:`InputError` naming the first bad entry."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be accuracies (numbers), got {values!r}") from error
    if open_interval:
        bad = ~((array > 0) & (array < 1))
        expected = "strictly between 0 and 1 (its logit must be finite)"
    else:
        bad = ~((array >= 0) & (array <= 1))
        expected = "between 0 and 1"
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        value = array[position] if position else array.item()
        hint = "; percentages must be divided by 100" if value > 1 else ""
        where = f" at position {position[0] if len(position) == 1 else position}" if position else ""
        raise InputError(f"{name} must be an accuracy as a fraction {expected}, got {value:g}{where}{hint}")
    return array


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x


def _line_parameter(value: Any, name: str) -> float:
    """``b1`` or ``b0`` as a finite float, or an :class:`InputError` (a NaN line would make every ER NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} (of the baseline line) must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{name} (of the baseline line) must be a finite number, got {number}; the paper's line "
                         f"is b1={PAPER_B1}, b0={PAPER_B0}")
    return number


def baseline_prediction(acc_id: Any, b1: float = PAPER_B1, b0: float = PAPER_B0) -> np.ndarray:
    """Shift accuracy the baseline line predicts from in-distribution accuracy: ``sigmoid(b1*logit(acc_id)+b0)``."""
    b1, b0 = _line_parameter(b1, "b1"), _line_parameter(b0, "b0")
    return _sigmoid(b1 * _logit(_accuracies(acc_id, "acc_id", open_interval=True)) + b0)


def effective_robustness(acc_id: Any, acc_shift: Any, b1: float = PAPER_B1, b0: float = PAPER_B0) -> Any:
    """Effective robustness (eq. 1): ``acc_shift - sigmoid(b1 * logit(acc_id) + b0)``.

    Args:
        acc_id: in-distribution (ImageNet) accuracy, fraction in (0, 1); scalar or array.
        acc_shift: mean accuracy over the shift sets, fraction in [0, 1]; broadcast against ``acc_id``.
        b1: slope of the baseline line on logit axes (paper: 0.76).
        b0: intercept (paper: -1.49).

    Returns:
        The same kind as the inputs: a float for scalars, a numpy array for arrays and lists, a float64 torch
        tensor (on the input's device) when either input is a tensor.

    Raises:
        InputError: an accuracy is outside its interval (e.g. given in percent), or ``b1``/``b0`` is not finite.

    Example:
        >>> round(effective_robustness(0.76, 0.60), 4)   # the line predicts 0.351 from 0.76
        0.2488
    """
    er = (_accuracies(acc_shift, "acc_shift", open_interval=False)
          - baseline_prediction(acc_id, b1, b0))
    tensors = [x for x in (acc_id, acc_shift) if isinstance(x, torch.Tensor)]
    if tensors:
        return torch.as_tensor(er, dtype=torch.float64, device=tensors[0].device)
    if np.ndim(acc_id) == 0 and np.ndim(acc_shift) == 0:
        return float(er)
    return er


def fit_baseline(acc_id: Any, acc_shift: Any) -> tuple[float, float, float]:
    """Fit the baseline line ``logit(acc_shift) = b1 * logit(acc_id) + b0`` by least squares.

    The same line as ``numpy.polyfit(logit(acc_id), logit(acc_shift), 1)``, in closed form in float64.

    Args:
        acc_id: in-distribution accuracies of the baseline models, fractions in (0, 1).
        acc_shift: their mean shift accuracies, fractions in (0, 1), same length.

    Returns:
        ``(b1, b0, r)``: slope, intercept and the Pearson correlation of the two logits.

    Example:
        >>> b1, b0, r = fit_baseline([0.6, 0.7, 0.8], [0.35, 0.45, 0.57])
        >>> round(b1, 3), round(r, 3)
        (0.918, 1.0)
    """
    x = _logit(_accuracies(acc_id, "acc_id", open_interval=True)).ravel()
    y = _logit(_accuracies(acc_shift, "acc_shift", open_interval=True)).ravel()
    if x.shape != y.shape:
        raise InputError(f"acc_id and acc_shift must have the same length, got {x.size} and {y.size}")
    if x.size < 2 or np.ptp(x) == 0:
        raise InputError("fitting a line needs at least 2 models with different in-distribution accuracies")
    dx, dy = x - x.mean(), y - y.mean()
    sxx, sxy, syy = float(dx @ dx), float(dx @ dy), float(dy @ dy)
    b1 = sxy / sxx
    b0 = float(y.mean()) - b1 * float(x.mean())
    if np.ptp(y) == 0:
        warnings.warn("every shift accuracy is the same: the correlation r is undefined (NaN)", RuntimeWarning,
                      stacklevel=2)
        return b1, b0, float("nan")
    return b1, b0, float(sxy / np.sqrt(sxx * syy))


def mean_shift_accuracy(accuracies: Mapping[str, Any], sets: Sequence[str] = SHIFT_SETS) -> Any:
    """ACC(S): the mean of the accuracies on the shift sets ``sets`` (default the paper's five).

    Args:
        accuracies: accuracy per dataset name (fractions in [0, 1]; scalars or arrays of equal shape); other keys
            (e.g. ``"imagenet"``) are ignored.
        sets: which datasets make up ACC(S).

    Returns:
        A float for scalars, else a numpy array.

    Example:
        >>> round(mean_shift_accuracy({"imagenet-v2": 0.6, "imagenet-r": 0.7, "imagenet-sketch": 0.4,
        ...                            "objectnet": 0.5, "imagenet-a": 0.3}), 6)
        0.5
    """
    missing = [name for name in sets if name not in accuracies]
    if missing:
        raise InputError(f"accuracies are missing for {', '.join(missing)} (ACC(S) averages {', '.join(sets)})")
    values = [_accuracies(accuracies[name], f"accuracy on {name}", open_interval=False) for name in sets]
    try:
        mean = np.mean(np.stack(np.broadcast_arrays(*values)), axis=0)
    except ValueError as error:
        raise InputError(f"accuracies on {', '.join(sets)} must have the same shape: {error}") from error
    return float(mean) if mean.ndim == 0 else mean
