"""Conformal calibration: the finite-sample quantile against its definition, split CQR against
MAPIE's ConformalizedQuantileRegressor, coverage >= 1 - alpha over repeated random splits (a
statistical test with a stated tolerance and fixed seeds), and CV+ against a per-point
transcription of its formula plus its 1 - 2 alpha guarantee."""

import math

import numpy as np
import pytest
from mapie.regression import ConformalizedQuantileRegressor
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import QuantileRegressor

from moeweave.aggregate import (
    PerLevel,
    apply_offsets,
    calibration_offsets,
    conformal_quantile,
    cqr_offset,
    cv_plus_cqr,
    cv_plus_intervals,
    interval_coverage,
)


def heteroscedastic(n, rng):
    x = rng.uniform(-2, 2, size=n)
    return x, x + (0.5 + np.abs(x)) * rng.normal(size=n)


@pytest.mark.parametrize("n", [1, 7, 19, 111])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.4, 0.9])
def test_conformal_quantile_is_the_finite_sample_order_statistic(n, alpha):
    scores = np.random.default_rng(n).normal(size=n)
    rank = math.ceil(round((1 - alpha) * (n + 1), 9))
    expected = math.inf if rank > n else sorted(scores)[rank - 1]
    assert conformal_quantile(scores, alpha) == expected


def test_too_few_calibration_points_give_an_infinite_interval():
    # ceil(0.9 * 6) = 6 > 5 scores: no finite offset keeps the guarantee, and none is invented.
    assert cqr_offset(np.zeros(5), np.ones(5), np.full(5, 0.5), alpha=0.1) == math.inf
    q = apply_offsets(np.array([[0.0, 0.5, 1.0]]), [math.inf], [0.1, 0.5, 0.9])
    assert q[0, 0] == -math.inf and q[0, 2] == math.inf


def test_split_cqr_matches_mapie():
    rng = np.random.default_rng(0)
    x, y = heteroscedastic(600, rng)
    X = x[:, None]
    train, calibration, test = slice(0, 300), slice(300, 500), slice(500, 600)
    alpha = 0.1
    models = [
        GradientBoostingRegressor(loss="quantile", alpha=level, n_estimators=30, random_state=0).fit(
            X[train], y[train]
        )
        for level in (alpha / 2, 1 - alpha / 2, 0.5)
    ]
    mapie = ConformalizedQuantileRegressor(models, confidence_level=1 - alpha, prefit=True)
    mapie.conformalize(X[calibration], y[calibration])
    _, intervals = mapie.predict_interval(X[test], symmetric_correction=True)  # [M, 2, 1]
    offset = cqr_offset(
        models[0].predict(X[calibration]), models[1].predict(X[calibration]), y[calibration], alpha
    )
    np.testing.assert_allclose(models[0].predict(X[test]) - offset, intervals[:, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(models[1].predict(X[test]) + offset, intervals[:, 1, 0], rtol=1e-12)


# Coverage of split CQR, averaged over R independent data sets each split at random into n
# calibration and m test points. Its expectation is ceil((1-alpha)(n+1)) / (n+1), in
# [1 - alpha, 1 - alpha + 1/(n+1)]. One repetition's coverage has a standard deviation of at
# most about 0.05 here, so the mean of R = 400 has one of about 0.0025: the tolerance of 0.01
# is four of them, on a test whose seeds are fixed.
REPETITIONS, N_CALIBRATION, N_TEST, TOLERANCE = 400, 50, 200, 0.01


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_split_cqr_covers_at_least_one_minus_alpha(alpha):
    coverages = []
    for repetition in range(REPETITIONS):
        rng = np.random.default_rng(repetition)
        x, y = heteroscedastic(N_CALIBRATION + N_TEST, rng)
        order = rng.permutation(y.size)
        calibration, test = order[:N_CALIBRATION], order[N_CALIBRATION:]
        # A deliberately wrong quantile model: constant width where the noise is not.
        lower, upper = x - 1.0, x + 1.0
        offset = cqr_offset(lower[calibration], upper[calibration], y[calibration], alpha)
        coverages.append(interval_coverage(y[test], lower[test] - offset, upper[test] + offset))
    mean = float(np.mean(coverages))
    assert mean >= 1 - alpha - TOLERANCE
    assert mean <= 1 - alpha + 1 / (N_CALIBRATION + 1) + TOLERANCE


def test_calibration_offsets_use_each_interval_nominal_level():
    rng = np.random.default_rng(1)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    q = np.sort(rng.normal(size=(80, 5)), axis=1)
    y = rng.normal(size=80)
    expected = [cqr_offset(q[:, 0], q[:, 4], y, 0.1), cqr_offset(q[:, 1], q[:, 3], y, 0.5)]
    np.testing.assert_allclose(calibration_offsets(q, y, levels), expected)


def test_apply_offsets_moves_bounds_then_restores_order():
    q = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    # The inner interval grows past the outer one, which shrinks: the sweep nests them again.
    out = apply_offsets(q, [-0.5, 1.5], levels)
    np.testing.assert_allclose(out, [[-0.5, -0.5, 2.0, 4.5, 4.5]])


def cv_plus_by_definition(lower_oof, upper_oof, y, folds, lower_test, upper_test, alpha):
    """Barber et al. (2021) CV+ with CQR scores, one test point at a time, sorted lists."""
    n = y.size
    scores = np.maximum(lower_oof - y, y - upper_oof)
    upper_rank = math.ceil((1 - alpha) * (n + 1))
    lower_rank = math.floor(alpha * (n + 1))
    lowers, uppers = [], []
    for m in range(lower_test.shape[1]):
        downs = sorted(lower_test[folds[i], m] - scores[i] for i in range(n))
        ups = sorted(upper_test[folds[i], m] + scores[i] for i in range(n))
        lowers.append(downs[lower_rank - 1] if lower_rank >= 1 else -math.inf)
        uppers.append(ups[upper_rank - 1] if upper_rank <= n else math.inf)
    return np.array(lowers), np.array(uppers)


@pytest.mark.parametrize(("n", "alpha"), [(7, 0.3), (19, 0.1), (111, 0.1), (5, 0.1)])
def test_cv_plus_matches_its_definition(n, alpha):
    rng = np.random.default_rng(n)
    folds = np.arange(n) % 3
    lower_oof, y = rng.normal(size=n) - 1, rng.normal(size=n)
    upper_oof = lower_oof + 2
    lower_test = rng.normal(size=(3, 13)) - 1
    upper_test = lower_test + rng.uniform(1, 3, size=(3, 13))
    got = cv_plus_cqr(lower_oof, upper_oof, y, folds, lower_test, upper_test, alpha)
    expected = cv_plus_by_definition(lower_oof, upper_oof, y, folds, lower_test, upper_test, alpha)
    np.testing.assert_allclose(got, expected)


def test_cv_plus_covers_at_least_one_minus_two_alpha():
    # CV+'s guarantee is 1 - 2 alpha (Barber et al. 2021, Theorem 4); 40 data sets of 60 + 100
    # points put the mean coverage's standard error near 0.005, far inside the 0.8 - 0.9 gap.
    alpha, coverages = 0.1, []
    model = PerLevel(
        QuantileRegressor(alpha=0.0, solver="highs"), level_param="quantile", quantiles=(0.05, 0.95)
    )
    for repetition in range(40):
        rng = np.random.default_rng(1000 + repetition)
        x, y = heteroscedastic(160, rng)
        X = np.column_stack([x, np.abs(x)])
        lower, upper = cv_plus_intervals(model, X[:60], y[:60], X[60:], alpha, cv=5, random_state=repetition)
        coverages.append(interval_coverage(y[60:], lower, upper))
    assert np.mean(coverages) >= 1 - 2 * alpha


def test_cv_plus_needs_the_interval_levels():
    model = PerLevel(QuantileRegressor(alpha=0.0), level_param="quantile", quantiles=(0.1, 0.9))
    with pytest.raises(ValueError, match=r"needs the levels 0.05 and 0.95"):
        cv_plus_intervals(model, np.zeros((10, 1)), np.zeros(10), np.zeros((2, 1)), alpha=0.1)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha \(the miscoverage\) must lie strictly inside \(0, 1\)"):
        conformal_quantile(np.zeros(3), alpha)


def test_nan_calibration_targets_are_refused():
    with pytest.raises(ValueError, match="y contains NaN"):
        cqr_offset(np.zeros(3), np.ones(3), np.array([0.5, np.nan, 0.5]), alpha=0.5)
