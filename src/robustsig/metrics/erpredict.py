"""Do robustness signatures predict effective robustness? Leave-one-model-out prediction and rank agreement.

The paper ends with a claim it never tests: kurtosis and unique concepts are "good proxies for ER". This module
tests it as a predictor, honestly:

- :func:`loo_monotone`: each signature alone. For every model, a monotone map from the signature to ER is fit on
  the *other* models (the other *groups*, with ``groups``: see below) (isotonic regression,
  ``sklearn.isotonic.IsotonicRegression``; increasing by default, the paper's hypothesis: a higher signature means
  a higher ER) and read at the held-out model's signature, linearly interpolated between the fitted points and
  extrapolated along the end segments (a clip would tie the two end models).
- :func:`loo_ridge`: one small regularised combination of several signatures (z-scored on the training models,
  ridge regression with ``alpha = 1``; ``sklearn.linear_model.Ridge``).
- :func:`loo_mean`: the reference every fitted predictor must beat on MAE: the mean ER of the other models.
- :func:`agreement`: Spearman rho, Kendall tau (tau-b) and the mean absolute error against the measured ER, each
  with a percentile bootstrap interval over models (resampling models; resamples where a correlation is undefined
  are left out of its interval).

Which values are ranked. Leave-one-out predictions of a weak predictor are *anti*-correlated with the truth (the
mean of the other models, :func:`loo_mean`, has rho = -1 on any pool: leaving out a high ER lowers its own
prediction), so ranking them would call an unrelated signature harmful. A single signature's rho and tau are
therefore those of the signature itself against ER (``agreement(..., ranked=signature)``): every increasing map of
it ranks the models alike and nothing is fit, so nothing leaks from the held-out model; its MAE is that of the
held-out monotone predictions. A label-free baseline (DoC, ATC) predicts ER directly with no fit, so its own
predictions are ranked. Only the combination ranks leave-one-out predictions, and its rho is biased downward.

Groups. Models that share weights (a pretrained model, its finetuned copy, the Wise-FT models between them) are not
independent: a fit that sees one of them predicts the others from what is nearly the same network. Every function
here takes ``groups`` (one label per model, as scikit-learn's ``LeaveOneGroupOut``): the fits then leave a whole
group out, its models are predicted together by the fit on every other group, the reference is the mean of the
other groups' models, and the bootstrap resamples groups rather than models. Without ``groups`` every model is its
own group (leave one model out).

With fewer than :data:`MIN_MODELS` models (or groups) every number here means little: :func:`small_pool_note` says
so, and the fitting functions warn.

What the fits are given. A signature column is first divided by its largest absolute value (neither a monotone map
nor a z-score changes; a kurtosis of 1e308 no longer overflows), and values equal up to float noise (within
:data:`TIE_TOLERANCE` of the largest) are made equal: two models with near-equal signatures but different ER would
otherwise give the fit's end segment a slope of 1e14, and a near-constant column a z-score of 1e12. Predictions are
clipped to ER's range, [-1, 1] (:data:`ER_RANGE`): an extrapolated fit may leave it, ER never does.

>>> import numpy as np
>>> kurtosis = np.array([3.0, 4.0, 8.0, 20.0, 70.0, 80.0])
>>> er = 0.3 * (1 - np.exp(-(kurtosis - 3) / 20))
>>> result = agreement(loo_monotone(kurtosis, er), er, ranked=kurtosis, seed=0)
>>> result.spearman, result.mae < 0.05
(1.0, True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

from robustsig.errors import InputError

MIN_MODELS = 5
"""Below this many models, rank correlations and their intervals mean little (the note says so)."""
BOOTSTRAP = 2000
"""Bootstrap resamples of the models."""
RIDGE_ALPHA = 1.0
"""Ridge penalty of the combination, on z-scored signatures."""
TIE_TOLERANCE = 1e-9
"""Signature values closer than this, relative to the column's largest absolute value, are the same value (see the
module notes); a column whose spread is below it is constant."""
ER_RANGE = (-1.0, 1.0)
"""ER is an accuracy minus a baseline accuracy: every prediction is clipped to this range."""


def small_pool_note(models: int, groups: int | None = None) -> str | None:
    """The plain warning for a pool under :data:`MIN_MODELS` models, or under :data:`MIN_MODELS` groups of models
    that share weights (None from :data:`MIN_MODELS` on)."""
    if models < MIN_MODELS:
        return (f"only {models} model(s) with ER and signatures: with fewer than {MIN_MODELS}, leave-one-out "
                "predictions, rank correlations and their intervals mean little (a handful of models can be ranked "
                "right by chance); add models before drawing conclusions")
    if groups is not None and groups < MIN_MODELS:
        return (f"{models} models with ER and signatures, but only {groups} groups of models that do not share "
                f"weights: with fewer than {MIN_MODELS} independent groups, leave-one-group-out predictions and "
                "their intervals mean little; add independent models before drawing conclusions")
    return None


def _vector(values: Any, name: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or (length is not None and array.shape[0] != length):
        raise InputError(f"{name} must be a 1-D array" + (f" of {length} values (one per model)" if length else "")
                         + f"; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or infinite values: drop the models without it first")
    return array


def _fit_scale(x: np.ndarray) -> np.ndarray:
    """A signature column as the fits see it: divided by its largest absolute value, values within
    :data:`TIE_TOLERANCE` of their sorted neighbour made equal to the first of their run (see the module notes).

    >>> _fit_scale(np.array([2.0, 4.0 + 1e-12, 4.0, 8.0]))
    array([0.25, 0.5 , 0.5 , 1.  ])
    """
    top = np.abs(x).max() if x.size else 0.0
    if top == 0:
        return x.copy()
    scaled = x / top
    order = np.argsort(scaled, kind="stable")
    ordered = scaled[order]
    starts = np.concatenate([[True], np.diff(ordered) > TIE_TOLERANCE])
    out = np.empty_like(scaled)
    out[order] = ordered[np.maximum.accumulate(np.where(starts, np.arange(ordered.size), 0))]
    return out


def _check_pool(x: np.ndarray, y: np.ndarray, labels: np.ndarray | None = None) -> None:
    if x.shape[0] < 3:
        raise InputError(f"leave-one-model-out prediction needs at least 3 models; got {x.shape[0]}")
    groups = None if labels is None else int(np.unique(labels).shape[0])
    if groups is not None and groups < 2:
        raise InputError("leave-one-group-out prediction needs at least 2 groups; every model is in one group")
    note = small_pool_note(x.shape[0], groups)
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=3)


def _group_labels(groups: Any, length: int) -> np.ndarray | None:
    """``groups`` as an array of one label per model (None stays None: every model its own group)."""
    if groups is None:
        return None
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != length:
        raise InputError(f"groups must give one label per model ({length}); got shape {labels.shape}")
    return labels


def _folds(length: int, labels: np.ndarray | None) -> list[np.ndarray]:
    """The held-out indices of each fold: one model at a time, or one group at a time (in order of first
    appearance)."""
    if labels is None:
        return [np.array([i]) for i in range(length)]
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return [np.flatnonzero(inverse == group) for group in np.argsort(first)]


def _monotone_predict(x: np.ndarray, y: np.ndarray, at: float, increasing: bool | None) -> float:
    from sklearn.isotonic import IsotonicRegression

    if np.ptp(x) == 0:
        return float(y.mean())
    if increasing is None:
        increasing = bool(np.nan_to_num(scipy.stats.spearmanr(x, y).statistic) >= 0) if np.ptp(y) > 0 else True
    fit = IsotonicRegression(increasing=increasing).fit(x, y)
    knots, values = fit.X_thresholds_, fit.y_thresholds_
    if knots.shape[0] == 1:
        return float(values[0])
    if at < knots[0]:
        slope = (values[1] - values[0]) / (knots[1] - knots[0])
        return float(values[0] + slope * (at - knots[0]))
    if at > knots[-1]:
        slope = (values[-1] - values[-2]) / (knots[-1] - knots[-2])
        return float(values[-1] + slope * (at - knots[-1]))
    return float(np.interp(at, knots, values))


def loo_monotone(signature: Any, er: Any, increasing: bool | None = True, *, groups: Any = None) -> np.ndarray:
    """Held-out ER predictions from one signature: for each model, a monotone fit on the others.

    Args:
        signature: one value per model (e.g. kurtosis).
        er: the measured ER of the same models.
        increasing: the direction of the fit: True (the paper's hypothesis), False, or None (chosen on each
            training fold by the sign of its Spearman correlation).
        groups: one label per model (see the module notes): the fit for a model leaves out its whole group.

    Returns:
        float64 array: model i's ER predicted by the fit on every other model (every other group), clipped to
        :data:`ER_RANGE`.

    Raises:
        InputError: fewer than 3 models or 2 groups, lengths differ, or a value is missing (NaN).
    """
    x = _vector(signature, "signature")
    y = _vector(er, "er", x.shape[0])
    labels = _group_labels(groups, x.shape[0])
    _check_pool(x, y, labels)
    x = _fit_scale(x)
    keep = np.ones(x.shape[0], dtype=bool)
    predictions = np.empty_like(y)
    for held in _folds(x.shape[0], labels):
        keep[held] = False
        for i in held:
            predictions[i] = _monotone_predict(x[keep], y[keep], x[i], increasing)
        keep[held] = True
    return np.clip(predictions, *ER_RANGE)


def loo_ridge(signatures: Any, er: Any, alpha: float = RIDGE_ALPHA, *, groups: Any = None) -> np.ndarray:
    """Held-out ER predictions from several signatures: ridge regression on signatures z-scored on the training
    models (a signature constant there, up to :data:`TIE_TOLERANCE`, gets weight 0), clipped to :data:`ER_RANGE`.

    Args:
        signatures: ``models x signatures``.
        er: the measured ER per model.
        alpha: the ridge penalty.
        groups: one label per model: each group is predicted by the fit on the other groups.
    """
    from sklearn.linear_model import Ridge

    X = np.asarray(signatures, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise InputError(f"signatures must be a finite models x signatures matrix; got shape {X.shape}")
    y = _vector(er, "er", X.shape[0])
    labels = _group_labels(groups, X.shape[0])
    _check_pool(X[:, 0], y, labels)
    X = np.stack([_fit_scale(column) for column in X.T], axis=1) if X.size else X
    predictions = np.empty_like(y)
    for held in _folds(X.shape[0], labels):
        train = np.ones(X.shape[0], dtype=bool)
        train[held] = False
        mean, scale = X[train].mean(axis=0), X[train].std(axis=0)
        scale[scale <= TIE_TOLERANCE] = np.inf  # constant up to float noise: weight 0, not a z-score of 1e12
        model = Ridge(alpha=alpha).fit((X[train] - mean) / scale, y[train])
        predictions[held] = model.predict((X[held] - mean) / scale)
    return np.clip(predictions, *ER_RANGE)


def loo_mean(er: Any, *, groups: Any = None) -> np.ndarray:
    """The no-signature reference: each model's ER predicted by the mean ER of the other models (of the models of
    the other groups, with ``groups``)."""
    y = _vector(er, "er")
    if y.shape[0] < 2:
        raise InputError(f"the leave-one-out mean needs at least 2 models; got {y.shape[0]}")
    labels = _group_labels(groups, y.shape[0])
    if labels is None:
        return (y.sum() - y) / (y.shape[0] - 1)
    folds = _folds(y.shape[0], labels)
    if len(folds) < 2:
        raise InputError("the leave-one-group-out mean needs at least 2 groups; every model is in one group")
    predictions = np.empty_like(y)
    for held in folds:
        predictions[held] = (y.sum() - y[held].sum()) / (y.shape[0] - held.shape[0])
    return predictions


def _ranks(values: np.ndarray) -> np.ndarray:
    return scipy.stats.rankdata(values, axis=-1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=-1) / denominator, np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (average ranks for ties, as ``scipy.stats.spearmanr``); NaN when a row is
    constant."""
    return _pearson_rows(_ranks(x), _ranks(y))


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row pair (as ``scipy.stats.kendalltau``); NaN when a row is constant."""
    dx = np.sign(x[..., :, None] - x[..., None, :])
    dy = np.sign(y[..., :, None] - y[..., None, :])
    concordance = (dx * dy).sum(axis=(-1, -2))
    denominator = np.sqrt(np.abs(dx).sum(axis=(-1, -2)) * np.abs(dy).sum(axis=(-1, -2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, concordance / denominator, np.nan)


@dataclass(frozen=True)
class Agreement:
    """How well predictions rank and match the measured ER (see :func:`agreement`).

    Attributes:
        spearman, kendall, mae: on all models.
        spearman_ci, kendall_ci, mae_ci: percentile bootstrap intervals over models (``level``).
        models: how many models.
        note: the small-pool warning, or None.
    """

    spearman: float
    kendall: float
    mae: float
    spearman_ci: tuple[float, float]
    kendall_ci: tuple[float, float]
    mae_ci: tuple[float, float]
    models: int
    level: float
    note: str | None


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _group_resamples(labels: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    """Bootstrap resamples of whole groups: each draws as many groups as there are, with replacement, and takes
    every model of each drawn group; returned as index matrices, one per resample length."""
    folds = _folds(labels.shape[0], labels)
    draws = np.random.default_rng(seed).integers(0, len(folds), size=(resamples, len(folds)))
    rows = [np.concatenate([folds[g] for g in draw]) for draw in draws]
    by_length: dict[int, list[np.ndarray]] = {}
    for row in rows:
        by_length.setdefault(row.shape[0], []).append(row)
    return [np.stack(same) for same in by_length.values()]


def agreement(predicted: Any, er: Any, *, ranked: Any = None, resamples: int = BOOTSTRAP, level: float = 0.95,
              seed: int = 0, groups: Any = None) -> Agreement:
    """Spearman rho, Kendall tau and MAE of ``predicted`` against ``er``, with bootstrap intervals over models
    (over groups of models, with ``groups``).

    Args:
        predicted: held-out (or label-free) ER predictions, one per model: the MAE's.
        er: the measured ER.
        ranked: the values whose ranks rho and tau compare with ER's (default: ``predicted``); a single signature
            passes itself (see the module notes).
        resamples: bootstrap resamples (models drawn with replacement).
        level: the intervals' coverage.
        seed: seeds the resampling.
        groups: one label per model: the bootstrap draws whole groups (models that share weights are not
            independent draws), and the note counts groups.

    Returns:
        :class:`Agreement`; a correlation is NaN when either side is constant.

    Example:
        >>> result = agreement([0.1, 0.2, 0.3, 0.25, 0.05], [0.12, 0.18, 0.33, 0.2, 0.0], seed=0)
        >>> result.spearman, result.kendall
        (1.0, 1.0)
    """
    p = _vector(predicted, "predicted")
    y = _vector(er, "er", p.shape[0])
    if p.shape[0] < 2:
        raise InputError(f"agreement needs at least 2 models; got {p.shape[0]}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1); got {level}")
    r = p if ranked is None else _vector(ranked, "ranked", p.shape[0])
    labels = _group_labels(groups, p.shape[0])
    if labels is None:
        indices = [np.random.default_rng(seed).integers(0, p.shape[0], size=(resamples, p.shape[0]))]
    else:
        indices = _group_resamples(labels, resamples, seed)
    rho = np.concatenate([spearman_rows(r[index], y[index]) for index in indices])
    tau = np.concatenate([kendall_rows(r[index], y[index]) for index in indices])
    mae = np.concatenate([np.abs(p[index] - y[index]).mean(axis=1) for index in indices])
    count = None if labels is None else int(np.unique(labels).shape[0])
    return Agreement(float(spearman_rows(r, y)), float(kendall_rows(r, y)), float(np.abs(p - y).mean()),
                     _interval(rho, level), _interval(tau, level), _interval(mae, level), int(p.shape[0]),
                     float(level), small_pool_note(p.shape[0], count))
