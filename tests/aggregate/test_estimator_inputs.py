"""Bad input gets a ValueError that names the problem: levels outside (0, 1), unsorted or
repeated; NaN targets; too few samples for the folds; unknown options; base models that do
not fit the aggregator's contract."""

import numpy as np
import pytest
from column_quantiles import ColumnQuantiles, column_library
from sklearn.linear_model import LinearRegression

from moeweave.aggregate import QuantileAggregator, check_quantiles, interval_pairs

X = np.random.default_rng(0).normal(size=(20, 3))
Y = X[:, 0].copy()


def aggregator(**params):
    return QuantileAggregator(column_library(1, 3), max_epochs=2, **params)


@pytest.mark.parametrize("quantiles", [(0.0, 0.5), (0.5, 1.0), (-0.1, 0.5), (0.5, 1.5), (0.1, np.nan)])
def test_levels_outside_the_open_unit_interval(quantiles):
    with pytest.raises(ValueError, match=r"quantiles must lie strictly inside \(0, 1\)"):
        aggregator(quantiles=quantiles).fit(X, Y)


@pytest.mark.parametrize("quantiles", [(0.9, 0.5, 0.1), (0.1, 0.5, 0.5)])
def test_unsorted_or_repeated_levels(quantiles):
    with pytest.raises(ValueError, match="quantiles must be strictly increasing"):
        aggregator(quantiles=quantiles).fit(X, Y)


@pytest.mark.parametrize("quantiles", [(), [[0.1, 0.9]], "median"])
def test_levels_that_are_not_a_sequence_of_numbers(quantiles):
    with pytest.raises(ValueError, match="quantiles must be"):
        check_quantiles(quantiles)


def test_nan_targets():
    y = Y.copy()
    y[3] = np.nan
    with pytest.raises(ValueError, match="y contains NaN"):
        aggregator().fit(X, y)


def test_too_few_samples_for_the_folds():
    with pytest.raises(
        ValueError, match=r"too few samples for cv: 5 folds need at least 5 samples, got n_samples=3"
    ):
        aggregator(cv=5).fit(X[:3], Y[:3])


@pytest.mark.parametrize("cv", [1, 0, "five", 2.5])
def test_fold_count_that_is_not_one(cv):
    with pytest.raises(ValueError, match="cv must be"):
        aggregator(cv=cv).fit(X, Y)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"granularity": "superfine"},
            r"granularity must be one of \('coarse', 'medium', 'fine'\), got 'superfine'",
        ),
        (
            {"noncross": "rearrange"},
            r"noncross must be one of \('sort', 'isotonic', 'minmax'\) or None, got 'rearrange'",
        ),
        ({"cross_penalty": -1.0}, r"cross_penalty must be None or a number >= 0, got -1.0"),
        ({"validation_fraction": 1.0}, r"validation_fraction must lie in \[0, 1\), got 1.0"),
    ],
)
def test_unknown_options(params, message):
    with pytest.raises(ValueError, match=message):
        aggregator(**params).fit(X, Y)


def test_base_model_without_levels():
    model = QuantileAggregator([("ols", LinearRegression())], max_epochs=2)
    with pytest.raises(
        ValueError, match=r"base estimator 'ols' \(LinearRegression\) has no `quantiles` parameter"
    ):
        model.fit(X, Y)


def test_base_model_predicting_the_wrong_shape():
    model = QuantileAggregator([("two", ColumnQuantiles(columns=(0, 1)))], max_epochs=2)
    with pytest.raises(
        ValueError, match=r"base estimator 'two' predicted shape \(4, 2\); .* \[N, Q\] = \[4, 3\]"
    ):
        model.fit(X, Y)


def test_duplicate_and_malformed_estimator_entries():
    with pytest.raises(ValueError, match="estimator names must be unique"):
        QuantileAggregator(column_library(1, 3) * 2).fit(X, Y)
    with pytest.raises(ValueError, match=r"estimators must be \(name, estimator\) pairs"):
        QuantileAggregator([ColumnQuantiles()]).fit(X, Y)
    with pytest.raises(ValueError, match="estimators is empty"):
        QuantileAggregator([]).fit(X, Y)


def test_calibration_needs_levels_that_pair_around_the_median():
    with pytest.raises(
        ValueError, match=r"do not pair into central intervals: level 0.3 \(column 1\) pairs with 0.5"
    ):
        interval_pairs([0.1, 0.3, 0.5, 0.9])
    model = aggregator(quantiles=(0.6, 0.7, 0.8)).fit(X, Y)
    with pytest.raises(ValueError, match=r"must straddle 0\.5"):
        model.calibrate(X, Y)


def test_local_weights_need_the_features():
    model = aggregator(local=True, hidden_sizes=(4,)).fit(X, Y)
    with pytest.raises(ValueError, match="local weights depend on x: pass X"):
        model.aggregation_weights()
