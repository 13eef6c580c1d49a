"""Wise-FT: weight-space interpolation between two classifiers of the same architecture (paper, appendix G).

Every floating-point parameter and buffer, head included, becomes ``(1 - alpha) * theta0 + alpha * theta1``
(computed with ``torch.lerp``, so ``alpha = 0`` and ``alpha = 1`` reproduce the inputs bit for bit); integer
buffers (BatchNorm's ``num_batches_tracked``) are copied from ``clf0``. ``alpha`` outside ``[0, 1]``
extrapolates along the same line (``alpha > 1`` moves past the finetuned weights); it is allowed because that
is a meaningful experiment, and only non-finite values are refused.

A head without a bias is a head whose bias is 0. A CLIP zero-shot head has none, and a model finetuned with D.1's
``wiseft`` head has one (started at 0, trained): the mix's bias is ``(1 - alpha) * 0 + alpha * b1``, which is what
wise-ft computes, its zero-shot ``ClassificationHead`` holding a bias of zeros. The mix has a bias except where it
*is* the bias-free end (``alpha = 0`` for a bias-free ``clf0``, ``alpha = 1`` for a bias-free ``clf1``), so both
ends are still reproduced bit for bit, state dict keys and fingerprint included.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from robustsig.errors import InputError
from robustsig.models.classifier import Classifier, add_zero_bias

_BIAS = "head.bias"


@dataclass(frozen=True)
class _Pairs:
    """The two classifiers' tensors by state dict key (a missing head bias as zeros), and which of the two heads
    have no bias of their own."""

    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    bias_free: tuple[bool, bool]


def interpolate(clf0: Classifier, clf1: Classifier, alpha: float) -> Classifier:
    """The Wise-FT classifier ``(1 - alpha) * clf0 + alpha * clf1``.

    Args:
        clf0: the zero-shot (or first) classifier; its preprocessing, taps and class names are kept.
        clf1: the finetuned (or second) classifier, same architecture and head shape.
        alpha: mixing weight; 0 gives ``clf0``'s weights, 1 gives ``clf1``'s.

    Returns:
        a new classifier (the inputs are not changed); ``meta["wiseft"]`` records alpha and both sources.

    Raises:
        InputError: the two state dicts differ in keys (other than a head bias only one of them has), shapes or
            dtypes (the first mismatch is named), or alpha is not finite.

    Example:
        >>> import torch
        >>> from robustsig.models.classifier import Classifier
        >>> def make(value):
        ...     head = torch.nn.Linear(2, 2)
        ...     torch.nn.init.constant_(head.weight, value)
        ...     return Classifier(torch.nn.Identity(), head, preprocess=lambda x: x, classnames=["a", "b"])
        >>> interpolate(make(0.0), make(1.0), 0.25).W[0, 0].item()
        0.25
    """
    mixed = copy.deepcopy(clf0)
    alpha = _check_alpha(alpha)
    _mix_into(mixed, _paired_states(clf0, clf1), alpha)
    _record(mixed, _sources(clf0, clf1), alpha)
    return mixed


def interpolation_path(clf0: Classifier, clf1: Classifier, alphas: Iterable[float]
                       ) -> Iterator[tuple[float, Classifier]]:
    """``(alpha, classifier)`` for each alpha, reusing one copy of the model.

    The same :class:`Classifier` object is updated in place for each alpha (memory stays at one extra model
    however many alphas); ``copy.deepcopy`` the ones to keep.

    Example:
        >>> for alpha, clf in interpolation_path(zero_shot, finetuned, [0.0, 0.5, 1.0]):  # doctest: +SKIP
        ...     print(alpha, evaluate(clf))
    """
    pairs = _paired_states(clf0, clf1)
    sources = _sources(clf0, clf1)
    mixed = copy.deepcopy(clf0)
    for alpha in alphas:
        alpha = _check_alpha(alpha)
        _mix_into(mixed, pairs, alpha)
        _record(mixed, sources, alpha)
        yield alpha, mixed


def _check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(value):
        raise InputError(f"alpha must be finite, got {alpha!r}")
    return value


def _paired_states(clf0: Classifier, clf1: Classifier) -> _Pairs:
    state0, state1 = clf0.state_dict(), clf1.state_dict()
    bias_free = (_BIAS not in state0, _BIAS not in state1)
    _zero_bias_for(state0, state1)
    _zero_bias_for(state1, state0)
    for key, t0 in state0.items():
        if key not in state1:
            raise InputError(f"cannot interpolate: {key!r} is in the first classifier but not the second; the two "
                             "must share one architecture (and head)")
        t1 = state1[key]
        if t0.shape != t1.shape:
            raise InputError(f"cannot interpolate: {key!r} has shape {tuple(t0.shape)} in the first classifier and "
                             f"{tuple(t1.shape)} in the second; the two must share one architecture (and head)")
        if t0.dtype != t1.dtype:
            raise InputError(f"cannot interpolate: {key!r} is {t0.dtype} in the first classifier and {t1.dtype} in "
                             "the second; convert both to one dtype first")
    extra = [key for key in state1 if key not in state0]
    if extra:
        raise InputError(f"cannot interpolate: {extra[0]!r} is in the second classifier but not the first; the two "
                         "must share one architecture (and head)")
    if clf0.classnames != clf1.classnames:
        warnings.warn("the two classifiers have different class names; the first one's are kept", stacklevel=3)
    return _Pairs({key: (t0, state1[key]) for key, t0 in state0.items()}, bias_free)


def _zero_bias_for(state: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    """Give ``state`` the zero head bias its head stands for when only ``other`` has a head bias (in place)."""
    if _BIAS in state or _BIAS not in other or "head.weight" not in state:
        return
    state[_BIAS] = torch.zeros(other[_BIAS].shape, dtype=other[_BIAS].dtype, device=state["head.weight"].device)


def _mix_into(target: Classifier, pairs: _Pairs, alpha: float) -> None:
    if _BIAS in pairs.tensors:  # the mix has a bias, except at the end whose head has none
        _set_bias(target, not ((alpha == 0 and pairs.bias_free[0]) or (alpha == 1 and pairs.bias_free[1])))
    state = target.state_dict()  # tensors share storage with the target's parameters and buffers
    with torch.no_grad():
        for key, (t0, t1) in pairs.tensors.items():
            if key not in state:  # the bias of a bias-free end, left out at that end
                continue
            if t0.is_floating_point() or t0.is_complex():
                state[key].copy_(torch.lerp(t0, t1.to(t0.device), alpha))
            else:
                state[key].copy_(t0)


def _set_bias(target: Classifier, present: bool) -> None:
    """Give ``target``'s head a bias (zeros, to be mixed into) or take it away."""
    getattr(target.head, "materialize", lambda: None)()  # a zero-shot head not built yet is built first
    if present:
        add_zero_bias(target.head)
    elif target.head._parameters.get("bias") is not None:
        target.head.bias = None


def _sources(clf0: Classifier, clf1: Classifier) -> dict[str, object]:
    return {"spec0": clf0.spec, "spec1": clf1.spec, "fingerprint0": clf0.fingerprint(),
            "fingerprint1": clf1.fingerprint(),
            "random_init": bool(clf0.meta.get("random_init")) and bool(clf1.meta.get("random_init"))}


def _record(mixed: Classifier, sources: dict[str, object], alpha: float) -> None:
    mixed.meta["spec"] = f"wiseft({sources['spec0'] or '?'}, {sources['spec1'] or '?'}, alpha={alpha:g})"
    mixed.meta["random_init"] = sources["random_init"]
    mixed.meta["wiseft"] = {"alpha": alpha, **{k: v for k, v in sources.items() if k != "random_init"}}
