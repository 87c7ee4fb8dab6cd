"""Base quantile models in the one shape the aggregator combines: a scikit-learn estimator with
a `quantiles` parameter whose predict returns [N, Q]. PerLevel turns any single-level quantile
regressor into one (a clone per level); QuantileForest wraps quantile-forest's regression forest,
which predicts every level from one fit. default_library is the library used when
QuantileAggregator gets no estimators: linear quantile regression, gradient boosting, two
quantile forests (bootstrapped and extremely randomised trees), LightGBM and a small MLP, model
families whose errors differ enough for a combination to pay.

Dimension legend: N samples, Q quantile levels.
"""

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import QuantileRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from moeweave.aggregate._deps import require
from moeweave.aggregate.levels import check_quantiles
from moeweave.aggregate.mlp import QuantileMLP


class PerLevel(BaseEstimator):
    """One clone of `estimator` per level, its `level_param` set to the level: "alpha" for
    GradientBoostingRegressor(loss="quantile") and LGBMRegressor(objective="quantile"),
    "quantile" for QuantileRegressor and HistGradientBoostingRegressor(loss="quantile")."""

    def __init__(self, estimator, level_param="alpha", quantiles=(0.1, 0.5, 0.9)):
        self.estimator = estimator
        self.level_param = level_param
        self.quantiles = quantiles

    def fit(self, X, y):
        levels = check_quantiles(self.quantiles)
        self.estimators_ = [
            clone(self.estimator).set_params(**{self.level_param: float(level)}).fit(X, y) for level in levels
        ]
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return np.column_stack([estimator.predict(X) for estimator in self.estimators_])  # [N, Q]


class QuantileForest(BaseEstimator):
    """A quantile regression forest (Meinshausen 2006): `forest` is quantile-forest's
    RandomForestQuantileRegressor; one fit, every level read from the leaf samples."""

    def __init__(self, forest, quantiles=(0.1, 0.5, 0.9)):
        self.forest = forest
        self.quantiles = quantiles

    def fit(self, X, y):
        check_quantiles(self.quantiles)
        self.forest_ = clone(self.forest).fit(X, y)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        levels = check_quantiles(self.quantiles)
        prediction = self.forest_.predict(X, quantiles=levels.tolist())
        return np.asarray(prediction, dtype=float).reshape(-1, levels.size)  # [N, Q]


def default_library() -> list[tuple[str, BaseEstimator]]:
    """(name, estimator) pairs of the default base library; the aggregator sets their levels
    and, where a random_state is None, a seed from its own random_state."""
    lightgbm = require("lightgbm", "the default base library")
    quantile_forest = require("quantile_forest", "the default base library")
    return [
        (
            # Koenker-Bassett regression, solved exactly as a linear programme. A straight line
            # errs where the trees do not (between and beyond their leaves), which is what a
            # combination gains from (docs/benchmarks.md, "Quantile aggregation").
            "linear",
            PerLevel(
                make_pipeline(StandardScaler(), QuantileRegressor(alpha=0.0, solver="highs")),
                level_param="quantileregressor__quantile",
            ),
        ),
        (
            "gradient_boosting",
            PerLevel(
                GradientBoostingRegressor(
                    loss="quantile", n_estimators=200, learning_rate=0.05, max_depth=3, min_samples_leaf=5
                )
            ),
        ),
        (
            "quantile_forest",
            QuantileForest(
                quantile_forest.RandomForestQuantileRegressor(n_estimators=200, min_samples_leaf=5)
            ),
        ),
        (
            "extra_trees",
            QuantileForest(quantile_forest.ExtraTreesQuantileRegressor(n_estimators=200, min_samples_leaf=5)),
        ),
        (
            "lightgbm",
            PerLevel(
                lightgbm.LGBMRegressor(
                    objective="quantile",
                    n_estimators=200,
                    learning_rate=0.05,
                    num_leaves=15,
                    min_child_samples=10,
                    # On data of this size LightGBM's threads only contend: a 200-tree fit on
                    # 90 rows took 6.2 s with 2 threads and 0.026 s with 1 on a 2-core machine.
                    n_jobs=1,
                    verbose=-1,
                )
            ),
        ),
        ("quantile_mlp", QuantileMLP()),
    ]
