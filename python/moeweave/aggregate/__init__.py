"""Flexible quantile aggregation (Fakoor et al., JMLR 2023): combine base quantile regressors
with softmax weights that are global or depend on the input (DQA, a gated mixture of quantile
experts), remove quantile crossings, and calibrate intervals with conformal prediction.

    from moeweave.aggregate import QuantileAggregator
    model = QuantileAggregator(quantiles=(0.05, 0.5, 0.95), granularity="medium").fit(X, y)
    model.calibrate(X_calibration, y_calibration).predict(X_test)   # [N, 3]

Needs the `aggregate` extra (scikit-learn; quantile-forest and lightgbm for the default base
library): pip install 'moeweave[aggregate]'. Usage and the math: docs/aggregate.md.
"""

from moeweave.aggregate._deps import require

require("sklearn", "moeweave.aggregate")

from moeweave.aggregate.conformal import (  # noqa: E402 (after the dependency check)
    apply_offsets,
    calibration_offsets,
    conformal_quantile,
    cqr_offset,
    cqr_scores,
    cv_plus_cqr,
    cv_plus_intervals,
)
from moeweave.aggregate.estimator import QuantileAggregator  # noqa: E402
from moeweave.aggregate.levels import check_quantiles, interval_pairs  # noqa: E402
from moeweave.aggregate.library import PerLevel, QuantileForest, default_library  # noqa: E402
from moeweave.aggregate.metrics import (  # noqa: E402
    interval_coverage,
    interval_width,
    pinball_loss,
    weighted_interval_score,
)
from moeweave.aggregate.mlp import QuantileMLP  # noqa: E402
from moeweave.aggregate.monotone import (  # noqa: E402
    isotonic_quantiles,
    minmax_sweep,
    monotonise,
    sort_quantiles,
)

__all__ = [
    "PerLevel",
    "QuantileAggregator",
    "QuantileForest",
    "QuantileMLP",
    "apply_offsets",
    "calibration_offsets",
    "check_quantiles",
    "conformal_quantile",
    "cqr_offset",
    "cqr_scores",
    "cv_plus_cqr",
    "cv_plus_intervals",
    "default_library",
    "interval_coverage",
    "interval_pairs",
    "interval_width",
    "isotonic_quantiles",
    "minmax_sweep",
    "monotonise",
    "pinball_loss",
    "sort_quantiles",
    "weighted_interval_score",
]
