"""ER prediction from signatures: planted pools (ER a monotone function of kurtosis -> rho = 1; ER unrelated -> the
interval covers 0), the ridge combination, the rank statistics against scipy, the small-pool warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from robustsig.metrics.directions import importance_concentration
from robustsig.errors import InputError
from robustsig.metrics.erpredict import (MIN_MODELS, agreement, kendall_rows, loo_mean, loo_monotone, loo_ridge,
                                         small_pool_note, spearman_rows)


@pytest.mark.parametrize("er_of", [
    lambda k: 0.3 * (1 - np.exp(-(k - 3) / 20)),   # saturating, like the paper's zero-shot models
    lambda k: 0.02 * np.log(k),                     # concave
    lambda k: 0.001 * (k - 3) ** 1.5,               # convex
])
def test_monotone_function_of_kurtosis_gives_rho_one(er_of):
    kurtosis = np.array([3.1, 3.4, 3.9, 4.6, 7.3, 8.0, 10.9, 12.1, 19.5, 24.3, 32.1, 73.6, 81.0])  # paper, Table 2
    er = er_of(kurtosis)
    predicted = loo_monotone(kurtosis, er)
    result = agreement(predicted, er, ranked=kurtosis, seed=0)
    assert result.spearman == pytest.approx(1.0) and result.kendall == pytest.approx(1.0)
    assert result.spearman_ci == pytest.approx((1.0, 1.0)) and result.note is None
    # the held-out predictions themselves rank the models right too, and beat the mean of the others
    assert scipy.stats.spearmanr(predicted, er).statistic == pytest.approx(1.0)
    assert result.mae < agreement(loo_mean(er), er).mae / 3


def test_decreasing_relation_found_when_the_direction_is_learned():
    kurtosis = np.linspace(3, 80, 10)
    er = 0.5 - 0.005 * kurtosis
    np.testing.assert_allclose(loo_monotone(kurtosis, er, increasing=None), er, atol=1e-12)
    assert agreement(loo_monotone(kurtosis, er), er, ranked=kurtosis).spearman == pytest.approx(-1.0)


def test_linear_relation_is_predicted_exactly():
    x = np.linspace(3, 30, 8)
    er = 0.01 * x - 0.02
    np.testing.assert_allclose(loo_monotone(x, er), er, atol=1e-12)


def test_unrelated_er_gives_an_interval_covering_zero():
    rng = np.random.default_rng(0)
    kurtosis, er = rng.uniform(3, 80, size=14), rng.uniform(0, 0.3, size=14)
    result = agreement(loo_monotone(kurtosis, er), er, ranked=kurtosis, seed=1)
    assert result.spearman_ci[0] < 0 < result.spearman_ci[1]
    assert result.kendall_ci[0] < 0 < result.kendall_ci[1]
    assert result.mae_ci[0] <= result.mae <= result.mae_ci[1]


def test_unrelated_signatures_cover_zero_in_most_pools():
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        kurtosis, er = rng.uniform(3, 80, size=12), rng.uniform(0, 0.3, size=12)
        low, high = agreement(loo_monotone(kurtosis, er), er, ranked=kurtosis, seed=seed, resamples=500).spearman_ci
        covered += low < 0 < high
    assert covered >= 17  # a 95% interval: about 19 of 20 null pools


def test_leave_one_out_mean_is_anti_correlated():
    er = np.array([0.1, 0.3, 0.2, 0.05, 0.25])
    assert agreement(loo_mean(er), er).spearman == pytest.approx(-1.0)


def test_ridge_combination_uses_the_informative_signature():
    rng = np.random.default_rng(2)
    informative, noise = rng.uniform(0, 1, size=12), rng.normal(size=12)
    er = 0.2 * informative + 0.05
    predicted = loo_ridge(np.stack([informative, noise, np.full(12, 3.0)], axis=1), er)  # a constant column too
    assert agreement(predicted, er).spearman > 0.9


def test_rank_statistics_equal_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 5, size=(50, 9)).astype(float), rng.normal(size=(50, 9))  # ties in x
    y[:, 3] = y[:, 4]
    for i in range(50):
        assert spearman_rows(x[i], y[i]) == pytest.approx(scipy.stats.spearmanr(x[i], y[i]).statistic, abs=1e-12)
        assert kendall_rows(x[i], y[i]) == pytest.approx(scipy.stats.kendalltau(x[i], y[i]).statistic, abs=1e-12)
    assert np.isnan(spearman_rows(np.ones(4), np.arange(4.0)))


def test_small_pool_is_said_plainly():
    x, er = np.array([3.0, 10.0, 50.0, 80.0]), np.array([0.01, 0.05, 0.2, 0.3])
    with pytest.warns(RuntimeWarning, match="mean little"):
        predicted = loo_monotone(x, er)
    result = agreement(predicted, er)
    assert result.models == 4 < MIN_MODELS and "mean little" in result.note
    assert small_pool_note(MIN_MODELS) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loo_monotone(np.arange(6.0), np.arange(6.0))  # 6 models: no warning


def test_bad_input():
    with pytest.raises(InputError, match="at least 3 models"):
        loo_monotone([1.0, 2.0], [0.1, 0.2])
    with pytest.raises(InputError, match="NaN"):
        loo_monotone([1.0, np.nan, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(InputError, match="one per model"):
        agreement([0.1, 0.2, 0.3], [0.1, 0.2])


def test_importance_concentration():
    importance = np.r_[np.full(2, 0.3), np.full(8, 0.05)]
    assert importance_concentration(importance) == pytest.approx(0.6 / 1.0)
    assert importance_concentration(np.ones(10)) == pytest.approx(0.2)


# --------------------------------------------------------------------------- leave one group out

POOL_GROUPS = np.array(["mnv2", "mnv2", "mnv2", "mnv2", "sq", "sq", "sq", "lite0", "lite1", "lite2", "rand"])


def _pool(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(POOL_GROUPS.shape[0], 3))
    er = X @ np.array([0.05, -0.02, 0.01]) + rng.normal(0, 0.01, POOL_GROUPS.shape[0])
    return X, er


def test_ridge_leaves_one_group_out_as_sklearn_does():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, er = _pool()
    X[:, 2] = 1.0  # a constant signature: weight 0 in both
    expected = cross_val_predict(make_pipeline(StandardScaler(), Ridge(alpha=1.0)), X, er, groups=POOL_GROUPS,
                                 cv=LeaveOneGroupOut())
    np.testing.assert_allclose(loo_ridge(X, er, groups=POOL_GROUPS), expected, rtol=1e-10, atol=1e-12)
    # without groups it is sklearn's LeaveOneOut, and the groups change the answer
    np.testing.assert_allclose(loo_ridge(X, er), cross_val_predict(make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
                                                                   X, er, cv=len(er)), rtol=1e-10, atol=1e-12)
    assert not np.allclose(loo_ridge(X, er), expected)


def test_mean_of_the_other_groups_is_sklearns_dummy_mean():
    from sklearn.dummy import DummyRegressor
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

    _, er = _pool(1)
    expected = cross_val_predict(DummyRegressor(), np.zeros((er.shape[0], 1)), er, groups=POOL_GROUPS,
                                 cv=LeaveOneGroupOut())
    np.testing.assert_allclose(loo_mean(er, groups=POOL_GROUPS), expected, rtol=1e-12)


def test_monotone_fit_leaves_one_group_out_as_sklearn_does():
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import LeaveOneGroupOut

    rng = np.random.default_rng(2)
    x = rng.uniform(3, 50, POOL_GROUPS.shape[0])
    er = 0.01 * np.sqrt(x) + rng.normal(0, 0.01, x.shape[0])
    predicted = loo_monotone(x, er, groups=POOL_GROUPS)
    compared = 0
    for train, test in LeaveOneGroupOut().split(x, er, POOL_GROUPS):
        fit = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x[train], er[train])
        inside = test[(x[test] >= x[train].min()) & (x[test] <= x[train].max())]  # outside: extrapolated, not clipped
        if inside.shape[0]:
            np.testing.assert_allclose(predicted[inside], fit.predict(x[inside]), rtol=1e-12)
        compared += inside.shape[0]
        # no model of the held-out group informs its prediction: changing their ER changes nothing
        moved = er.copy()
        moved[test] += 1.0
        np.testing.assert_allclose(loo_monotone(x, moved, groups=POOL_GROUPS)[test], predicted[test], rtol=1e-12)
    assert compared >= 8


def test_group_bootstrap_draws_whole_groups_and_the_note_counts_groups():
    X, er = _pool(3)
    predicted = loo_ridge(X, er, groups=POOL_GROUPS)
    by_model = agreement(predicted, er, seed=0)
    by_group = agreement(predicted, er, seed=0, groups=POOL_GROUPS)
    assert (by_group.spearman, by_group.mae) == (by_model.spearman, by_model.mae)  # the point values do not change
    assert by_group.spearman_ci != by_model.spearman_ci and by_group.models == 11
    assert by_group.note is None  # 6 groups
    few = agreement(predicted[:7], er[:7], groups=POOL_GROUPS[:7])  # 7 models in 2 groups
    assert few.note is not None and "only 2 groups" in few.note
    # a resample of groups holds every model of each drawn group
    from robustsig.metrics.erpredict import _group_resamples

    for index in _group_resamples(POOL_GROUPS, 50, seed=1):
        for row in index:
            drawn = POOL_GROUPS[row]
            for group in set(drawn):
                assert (drawn == group).sum() % (POOL_GROUPS == group).sum() == 0


def test_groups_are_checked():
    X, er = _pool()
    with pytest.raises(InputError, match="one label per model"):
        loo_ridge(X, er, groups=POOL_GROUPS[:5])
    with pytest.raises(InputError, match="at least 2 groups"):
        loo_monotone(X[:, 0], er, groups=["a"] * er.shape[0])
    with pytest.raises(InputError, match="at least 2 groups"):
        loo_mean(er, groups=["a"] * er.shape[0])
