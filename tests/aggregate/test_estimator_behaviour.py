"""What QuantileAggregator does, against outside references: its out-of-fold predictions are
scikit-learn's cross_val_predict, its base models are plain refits, its calibrated interval is
MAPIE's CQR interval, a single base model comes back unchanged, local (DQA) weights find the
model that is right where it is right, and fits are reproducible and cached."""

import numpy as np
import pytest
import torch
from column_quantiles import ColumnQuantiles, column_library
from mapie.regression import ConformalizedQuantileRegressor
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.model_selection import KFold, cross_val_predict

from moeweave.aggregate import PerLevel, QuantileAggregator, default_library, weighted_interval_score

LEVELS = (0.1, 0.5, 0.9)
Z = np.array([-1.2816, 0.0, 1.2816])  # standard normal quantiles at LEVELS


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(90, 2))
    y = X[:, 0] + (0.5 + np.abs(X[:, 1])) * rng.normal(size=90)
    return X, y


def boosting():
    return PerLevel(GradientBoostingRegressor(loss="quantile", n_estimators=15, max_depth=2, random_state=0))


def test_out_of_fold_predictions_are_cross_val_predict(data):
    X, y = data
    folds = KFold(3, shuffle=True, random_state=4)
    model = QuantileAggregator([("gb", boosting())], quantiles=LEVELS, cv=folds, max_epochs=2).fit(X, y)
    expected = cross_val_predict(clone(boosting()).set_params(quantiles=LEVELS), X, y, cv=folds)
    np.testing.assert_allclose(model.oof_predictions_[:, 0], expected)
    refit = clone(boosting()).set_params(quantiles=LEVELS).fit(X, y)
    np.testing.assert_allclose(model.predict_base(X[:7])[:, 0], refit.predict(X[:7]))


def test_one_base_model_comes_back_unchanged(data):
    X, y = data
    features = np.column_stack([X[:, 0] + 0.3 * z for z in Z])  # already monotone
    model = QuantileAggregator(column_library(1, 3), granularity="medium", max_epochs=5, random_state=0)
    # the weight is exactly 1; the combiner computes in float32
    np.testing.assert_allclose(model.fit(features, y).predict(features), features, rtol=1e-5, atol=1e-5)


def switching_problem(n, rng):
    """Model A is exact for x < 0 and biased for x > 0; model B the other way round."""
    x = rng.uniform(-1, 1, size=n)
    y = np.sin(3 * x) + 0.2 * rng.normal(size=n)
    truth = np.sin(3 * x)[:, None] + 0.2 * Z  # [N, Q]
    a = truth + np.where(x > 0, 1.0, 0.0)[:, None]
    b = truth - np.where(x < 0, 1.0, 0.0)[:, None]
    return np.column_stack([a, b, x]), y  # columns 0-2: A, 3-5: B, 6: x


def test_local_weights_pick_the_model_that_is_right_there():
    rng = np.random.default_rng(1)
    X, y = switching_problem(400, rng)
    X_test, y_test = switching_problem(400, rng)
    common = dict(quantiles=LEVELS, granularity="medium", cv=2, hidden_sizes=(16,), random_state=0)
    local = QuantileAggregator(column_library(2, 3), local=True, **common).fit(X, y)
    global_ = QuantileAggregator(column_library(2, 3), **common).fit(X, y)
    wis_local = weighted_interval_score(y_test, local.predict(X_test), LEVELS)
    wis_global = weighted_interval_score(y_test, global_.predict(X_test), LEVELS)
    assert wis_local < 0.6 * wis_global
    weights = local.aggregation_weights(X_test)  # [N, Q, P]
    on_a_side = X_test[:, 6] < -0.2
    on_b_side = X_test[:, 6] > 0.2
    assert weights[on_a_side, :, 0].mean() > 0.9
    assert weights[on_b_side, :, 1].mean() > 0.9


class Column(RegressorMixin, BaseEstimator):
    """One level of a fitted aggregator, in the shape MAPIE's prefit mode takes."""

    def __init__(self, model=None, column=0):
        self.model = model
        self.column = column

    def fit(self, X, y):
        self.n_features_in_ = self.model.n_features_in_
        return self

    def predict(self, X):
        return self.model.predict(X)[:, self.column]


def test_calibrated_interval_is_mapie_cqr(data):
    X, y = data
    rng = np.random.default_rng(5)
    X_more = rng.uniform(-2, 2, size=(140, 2))
    y_more = X_more[:, 0] + (0.5 + np.abs(X_more[:, 1])) * rng.normal(size=140)
    calibration, test = slice(0, 100), slice(100, 140)
    levels = (0.05, 0.5, 0.95)
    model = QuantileAggregator([("gb", boosting())], quantiles=levels, cv=3, max_epochs=5, random_state=0)
    model.fit(X, y)
    raw = model.predict(X_more[test])
    mapie = ConformalizedQuantileRegressor(
        [Column(model, k).fit(X, y) for k in (0, 2, 1)], confidence_level=0.9, prefit=True
    )
    mapie.conformalize(X_more[calibration], y_more[calibration])
    _, intervals = mapie.predict_interval(X_more[test], symmetric_correction=True)
    calibrated = model.calibrate(X_more[calibration], y_more[calibration]).predict(X_more[test])
    # our min-max sweep keeps each bound on its side of the median; MAPIE has no such step
    np.testing.assert_allclose(calibrated[:, 0], np.minimum(intervals[:, 0, 0], raw[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(calibrated[:, 2], np.maximum(intervals[:, 1, 0], raw[:, 1]), rtol=1e-12)
    np.testing.assert_array_equal(calibrated[:, 1], raw[:, 1])


def test_crossing_penalty_removes_crossings():
    # Model A has the right median and reversed tails, model B the right order and a bias of 3:
    # the unpenalised coarse weights favour A and every row crosses by about 0.5; a penalty of
    # 10 per unit of crossing moves the weights to where the crossing vanishes.
    rng = np.random.default_rng(2)
    truth = rng.normal(size=300)
    y = truth + rng.normal(size=300)
    X = np.column_stack([truth[:, None] - 1.2 * Z, truth[:, None] + 3.0 + 1.2 * Z])
    common = dict(quantiles=LEVELS, noncross=None, cv=2, random_state=0)
    free = QuantileAggregator(column_library(2, 3), **common).fit(X, y).predict(X)
    penalised = QuantileAggregator(column_library(2, 3), cross_penalty=10.0, **common).fit(X, y).predict(X)
    assert np.all(np.diff(free, axis=1) < -0.3)
    assert np.all(np.diff(penalised, axis=1) > -0.05)


def test_seeded_fits_are_reproducible_and_leave_torch_alone(data):
    X, y = data
    state = torch.random.get_rng_state()
    model = QuantileAggregator(
        [("gb", boosting())], granularity="fine", local=True, cv=3, max_epochs=20, random_state=3
    )
    first = clone(model).fit(X, y).predict(X)
    second = clone(model).fit(X, y).predict(X)
    np.testing.assert_array_equal(first, second)
    assert torch.equal(torch.random.get_rng_state(), state)


class CountingColumns(ColumnQuantiles):
    fits = 0

    def fit(self, X, y):
        CountingColumns.fits += 1
        return super().fit(X, y)


def test_memory_fits_the_base_library_once(data, tmp_path):
    X, y = data
    features = np.column_stack([X[:, 0] + 0.5 * z for z in Z])
    library = [("c", CountingColumns(columns=(0, 1, 2)))]
    for granularity in ("coarse", "medium", "fine"):
        QuantileAggregator(
            library, granularity=granularity, cv=3, max_epochs=2, memory=str(tmp_path), random_state=0
        ).fit(features, y)
    assert CountingColumns.fits == 4  # three folds and the refit, once for all three


def test_default_library_end_to_end(data):
    X, y = data
    model = QuantileAggregator(cv=2, random_state=0).fit(X, y)
    assert [name for name, _ in model.base_models_] == [name for name, _ in default_library()]
    prediction = model.predict(X[:11])
    assert prediction.shape == (11, 3)
    assert np.all(np.diff(prediction, axis=1) >= 0)
