"""Metrics against oracles outside moeweave: the pinball loss per level against scikit-learn's
mean_pinball_loss; WIS against Bracher et al.'s interval form (median term plus alpha-weighted
interval scores); coverage and width against a direct count."""

import numpy as np
import pytest
from sklearn.metrics import mean_pinball_loss

from moeweave.aggregate import interval_coverage, interval_width, pinball_loss, weighted_interval_score

LEVELS = np.array([0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975])


@pytest.fixture
def forecast():
    rng = np.random.default_rng(0)
    n = 111
    y = rng.normal(size=n)
    q = np.sort(rng.normal(size=(n, LEVELS.size)), axis=1) * 1.5
    return y, q


def test_pinball_per_level_matches_scikit_learn(forecast):
    y, q = forecast
    expected = [mean_pinball_loss(y, q[:, k], alpha=tau) for k, tau in enumerate(LEVELS)]
    np.testing.assert_allclose(pinball_loss(y, q, LEVELS), expected, rtol=1e-12)


def bracher_wis(y, q, levels):
    """(|y - m| / 2 + sum_k alpha_k / 2 * IS_alpha_k) / (K + 1/2) with
    IS_alpha(l, u; y) = (u - l) + 2 / alpha * (l - y)_+ + 2 / alpha * (y - u)_+, per sample, then
    averaged: Bracher, Ray, Gneiting, Reich (2021), PLoS Comput Biol, eq. (2)."""
    k_max = levels.size // 2
    total = 0.5 * np.abs(y - q[:, k_max])
    for k in range(k_max):
        alpha = 2 * levels[k]
        lower, upper = q[:, k], q[:, -1 - k]
        interval = (
            (upper - lower) + 2 / alpha * np.maximum(lower - y, 0) + 2 / alpha * np.maximum(y - upper, 0)
        )
        total += alpha / 2 * interval
    return float(np.mean(total / (k_max + 0.5)))


def test_wis_matches_the_interval_form(forecast):
    y, q = forecast
    assert weighted_interval_score(y, q, LEVELS) == pytest.approx(bracher_wis(y, q, LEVELS), rel=1e-12)


def test_coverage_and_width_count_directly():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    lower = np.array([0.0, 1.5, -1.0, 3.5])
    upper = np.array([1.0, 2.0, 2.0, 4.0])
    assert interval_coverage(y, lower, upper) == 0.5  # rows 0 and 2; the bounds count as inside
    assert interval_width(lower, upper) == pytest.approx(np.mean([1.0, 0.5, 3.0, 0.5]))


def test_shape_mismatch_is_named(forecast):
    y, q = forecast
    with pytest.raises(ValueError, match=r"predictions must be \[N, Q\] = \[111, 6\]"):
        pinball_loss(y, q, LEVELS[:-1])
    with pytest.raises(ValueError, match="y must be 1-D"):
        pinball_loss(q, q, LEVELS)
