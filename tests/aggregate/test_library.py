"""The base library's wrappers against the libraries they wrap: PerLevel is one scikit-learn
fit per level, QuantileForest is quantile-forest's own prediction, and the quantile MLP and the
library's linear member learn the quantiles of a known distribution."""

import numpy as np
import pytest
from quantile_forest import RandomForestQuantileRegressor
from sklearn.base import clone
from sklearn.ensemble import GradientBoostingRegressor

from moeweave.aggregate import PerLevel, QuantileForest, QuantileMLP, default_library, interval_coverage

LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(800, 2))
    return X, X[:, 0] + rng.normal(size=800)


def test_per_level_is_one_fit_per_level(data):
    X, y = data
    boosting = GradientBoostingRegressor(loss="quantile", n_estimators=10, random_state=0)
    ours = PerLevel(boosting, quantiles=LEVELS).fit(X[:200], y[:200]).predict(X[200:230])
    for k, level in enumerate(LEVELS):
        single = clone(boosting).set_params(alpha=level).fit(X[:200], y[:200])
        np.testing.assert_array_equal(ours[:, k], single.predict(X[200:230]))


def test_quantile_forest_is_the_forest_prediction(data):
    X, y = data
    forest = RandomForestQuantileRegressor(n_estimators=20, random_state=0)
    ours = QuantileForest(forest, quantiles=LEVELS).fit(X[:200], y[:200]).predict(X[200:230])
    theirs = clone(forest).fit(X[:200], y[:200]).predict(X[200:230], quantiles=list(LEVELS))
    np.testing.assert_array_equal(ours, theirs)


def test_quantile_forest_with_one_level_is_still_two_dimensional(data):
    X, y = data
    forest = RandomForestQuantileRegressor(n_estimators=5, random_state=0)
    assert QuantileForest(forest, quantiles=(0.5,)).fit(X[:50], y[:50]).predict(X[:4]).shape == (4, 1)


def test_quantile_mlp_learns_gaussian_quantiles(data):
    # y = x0 + N(0, 1): the 10 % and 90 % quantiles are x0 -/+ 1.2816 and the 80 % interval
    # covers 80 % of fresh points. 600 training points leave the fit about 0.1 off, and 2000
    # test points measure coverage to +/- 0.01 (one standard error): tolerances 0.25 and 0.05.
    X, y = data
    model = QuantileMLP(quantiles=LEVELS, hidden_sizes=(32,), random_state=0).fit(X[:600], y[:600])
    rng = np.random.default_rng(1)
    X_test = rng.uniform(-2, 2, size=(2000, 2))
    y_test = X_test[:, 0] + rng.normal(size=2000)
    prediction = model.predict(X_test)
    offsets = np.mean(prediction - X_test[:, [0]], axis=0)
    np.testing.assert_allclose(offsets, [-1.2816, 0.0, 1.2816], atol=0.25)
    assert interval_coverage(y_test, prediction[:, 0], prediction[:, 2]) == pytest.approx(0.8, abs=0.05)


def test_default_library_linear_member_learns_gaussian_quantiles(data):
    # y = x0 + N(0, 1) is linear at every level: slope 1, intercepts -1.2816, 0, 1.2816. From
    # 800 points the LP's intercepts have standard errors of ~0.06 at the outer levels and the
    # slopes ~0.05 per unit of x: tolerance 0.25, about 4 of them at the grid's points.
    X, y = data
    linear = dict(default_library())["linear"].set_params(quantiles=LEVELS).fit(X, y)
    grid = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    expected = grid[:, [0]] + np.array([-1.2816, 0.0, 1.2816])
    np.testing.assert_allclose(linear.predict(grid), expected, atol=0.25)


def test_default_library_has_the_six_families():
    names = [name for name, _ in default_library()]
    assert names == [
        "linear",
        "gradient_boosting",
        "quantile_forest",
        "extra_trees",
        "lightgbm",
        "quantile_mlp",
    ]
    for _, estimator in default_library():
        assert "quantiles" in estimator.get_params()
