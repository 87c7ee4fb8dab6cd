"""QuantileAggregator: the scikit-learn face of flexible quantile aggregation (Fakoor, Kim,
Mueller, Smola, Tibshirani, JMLR 2023). fit cross-fits the base library, trains the softmax
weights on the out-of-fold predictions, then keeps the base models refitted on every row;
predict combines their predictions, removes crossings and, after calibrate, applies the split
conformal offsets.

Dimension legend: N samples, D features, P base models, Q quantile levels, K central intervals.
"""

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import KFold
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, check_memory, validate_data

from moeweave.aggregate.combiner import GRANULARITIES, Combiner
from moeweave.aggregate.conformal import apply_offsets, calibration_offsets
from moeweave.aggregate.crossfit import base_predictions, cross_fit
from moeweave.aggregate.levels import check_quantiles
from moeweave.aggregate.library import default_library
from moeweave.aggregate.metrics import weighted_interval_score
from moeweave.aggregate.monotone import METHODS, monotonise
from moeweave.aggregate.training import (
    TrainingConfig,
    as_tensor,
    crossing_penalty,
    draw_seed,
    fit_module,
    location_scale,
    pinball_sum,
    seeded,
)


def _seed_random_states(estimator, random_state: np.random.RandomState):
    """Give every unset random_state inside `estimator` (nested ones too) a seed from
    random_state, as scikit-learn's ensembles do, so a seeded aggregator is reproducible."""
    params = estimator.get_params(deep=True)
    keys = sorted(
        k for k in params if (k == "random_state" or k.endswith("__random_state")) and params[k] is None
    )
    return estimator.set_params(**{key: draw_seed(random_state) for key in keys})


class QuantileAggregator(RegressorMixin, BaseEstimator):
    """Combine base quantile regressors into one; predict(X [N, D]) -> [N, Q] at `quantiles`.

    Parameters
    ----------
    estimators : list of (name, estimator) or None
        Base models: scikit-learn estimators with a `quantiles` parameter whose predict returns
        [N, Q] (PerLevel, QuantileForest, QuantileMLP build them). None: default_library().
    quantiles : increasing levels in (0, 1).
    granularity : "coarse" (one weight per model), "medium" (per model and level) or "fine"
        (per level, over every model's every level).
    local : False for global weights; True for weights computed from x by an MLP (DQA).
    noncross : "sort", "isotonic", "minmax" or None: how predict removes quantile crossings.
    cross_penalty : None, or lambda of the training penalty lambda * sum_{k<l} (g_k - g_l + cross_margin)_+.
    cross_margin : delta of that penalty, in the target's units.
    cv : folds of the out-of-fold base predictions (shuffled with random_state), or a splitter.
    hidden_sizes : hidden widths of the local weight network.
    learning_rate, max_epochs, patience, batch_size, validation_fraction : Adam and early
        stopping of the weights; validation_fraction=0 trains max_epochs on every row.
    memory : None, a folder or a joblib.Memory caching the cross-fitted base library, so that
        aggregators differing only in how they combine (granularity, local, ...) fit it once.
    random_state : seeds the folds, the validation split, the weights' initialisation and every
        base model whose own random_state is None.
    """

    def __init__(
        self,
        estimators=None,
        quantiles=(0.1, 0.5, 0.9),
        granularity="coarse",
        local=False,
        noncross="sort",
        cross_penalty=None,
        cross_margin=0.0,
        cv=5,
        hidden_sizes=(64, 64),
        learning_rate=1e-2,
        max_epochs=500,
        patience=20,
        batch_size=256,
        validation_fraction=0.2,
        memory=None,
        random_state=None,
    ):
        self.estimators = estimators
        self.quantiles = quantiles
        self.granularity = granularity
        self.local = local
        self.noncross = noncross
        self.cross_penalty = cross_penalty
        self.cross_margin = cross_margin
        self.cv = cv
        self.hidden_sizes = hidden_sizes
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.memory = memory
        self.random_state = random_state

    def _check_options(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.noncross is not None and self.noncross not in METHODS:
            raise ValueError(f"noncross must be one of {METHODS} or None, got {self.noncross!r}")
        if self.cross_penalty is not None and not self.cross_penalty >= 0:
            raise ValueError(f"cross_penalty must be None or a number >= 0, got {self.cross_penalty!r}")

    def _library(self, levels: np.ndarray, random_state: np.random.RandomState) -> list:
        pairs = default_library() if self.estimators is None else list(self.estimators)
        if not pairs:
            raise ValueError("estimators is empty: give at least one (name, estimator) pair, or None")
        names = []
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ValueError(f"estimators must be (name, estimator) pairs, got {pair!r}")
            name, estimator = pair
            if "quantiles" not in estimator.get_params(deep=False):
                raise ValueError(
                    f"base estimator {name!r} ({type(estimator).__name__}) has no `quantiles` parameter; "
                    "wrap a single-level quantile regressor in moeweave.aggregate.PerLevel"
                )
            names.append(name)
        if len(set(names)) != len(names):
            raise ValueError(f"estimator names must be unique, got {names}")
        return [
            (name, _seed_random_states(clone(estimator).set_params(quantiles=tuple(levels)), random_state))
            for name, estimator in pairs
        ]

    def _splitter(self, n_samples: int, random_state: np.random.RandomState):
        if isinstance(self.cv, numbers.Integral) and not isinstance(self.cv, bool):
            if self.cv < 2:
                raise ValueError(f"cv must be at least 2 folds, got cv={self.cv}")
            splitter = KFold(int(self.cv), shuffle=True, random_state=draw_seed(random_state))
        elif hasattr(self.cv, "split") and hasattr(self.cv, "get_n_splits"):
            splitter = self.cv
        else:
            raise ValueError(
                f"cv must be a number of folds (int >= 2) or a scikit-learn splitter, got {self.cv!r}"
            )
        folds = splitter.get_n_splits()
        if n_samples < folds:
            raise ValueError(
                f"too few samples for cv: {folds} folds need at least {folds} samples, got n_samples={n_samples}"
            )
        return splitter

    def fit(self, X, y):
        levels = check_quantiles(self.quantiles)
        self._check_options()
        X, y = validate_data(self, X, y, y_numeric=True)
        random_state = check_random_state(self.random_state)
        estimators = self._library(levels, random_state)
        splitter = self._splitter(X.shape[0], random_state)
        oof, self.base_models_ = check_memory(self.memory).cache(cross_fit)(
            estimators, X, y, splitter, levels.size
        )
        self.oof_predictions_ = oof  # [N, P, Q]
        self.quantiles_ = levels  # [Q], as fitted: set_params after fit must not reshape predict
        # Softmax weights sum to 1 per level, so standardising targets and base predictions
        # with the target's statistics changes nothing but the optimiser's scale.
        self.x_mean_, self.x_scale_ = location_scale(X)
        self.y_mean_, self.y_scale_ = location_scale(y)
        config = TrainingConfig.of(self, draw_seed(random_state))
        with seeded(config.seed):
            combiner = Combiner(
                self.granularity,
                len(estimators),
                levels.size,
                X.shape[1] if self.local else None,
                self.hidden_sizes,
            )
        self.combiner_ = fit_module(
            combiner,
            self._inputs(oof, X),
            as_tensor((y - self.y_mean_) / self.y_scale_),
            self._loss(levels),
            config,
        )
        self.calibration_offsets_ = None
        return self

    def _inputs(self, base: np.ndarray, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The combiner's inputs in standardised units: base [N, P, Q], x [N, D]."""
        return as_tensor((base - self.y_mean_) / self.y_scale_), as_tensor((X - self.x_mean_) / self.x_scale_)

    def _loss(self, levels: np.ndarray):
        levels_t = as_tensor(levels)  # [Q]
        penalty = float(self.cross_penalty or 0.0)
        margin = float(self.cross_margin) / float(self.y_scale_)

        def loss(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            value = pinball_sum(prediction, y, levels_t)
            if penalty:
                value = value + penalty * crossing_penalty(prediction, margin)
            return value

        return loss

    def _features_and_base(self, X) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return X, base_predictions(self.base_models_, X, self.quantiles_.size)  # [N, D], [N, P, Q]

    def predict_base(self, X) -> np.ndarray:
        """The base models' predictions [N, P, Q] (fitted on every training row)."""
        return self._features_and_base(X)[1]

    def _predict_uncalibrated(self, X) -> np.ndarray:
        X, base = self._features_and_base(X)
        with torch.no_grad():
            scaled = self.combiner_(*self._inputs(base, X)).double().numpy()  # [N, Q]
        return monotonise(self.y_mean_ + self.y_scale_ * scaled, self.quantiles_, self.noncross)

    def predict(self, X) -> np.ndarray:
        """Aggregated quantiles [N, Q], crossings removed per `noncross`; after calibrate, each
        central interval moved by its conformal offset (then min-max swept, which only widens)."""
        prediction = self._predict_uncalibrated(X)
        if self.calibration_offsets_ is None:
            return prediction
        return apply_offsets(prediction, self.calibration_offsets_, self.quantiles_)

    def calibrate(self, X, y):
        """Split CQR on a calibration set X [N, D], y [N] the fit never saw: one offset per
        central interval (levels k and Q-1-k), each at its nominal miscoverage
        1 - (tau_upper - tau_lower). Stored as calibration_offsets_ [K]; returns self."""
        check_is_fitted(self)
        X, y = validate_data(self, X, y, reset=False, y_numeric=True)
        self.calibration_offsets_ = calibration_offsets(self._predict_uncalibrated(X), y, self.quantiles_)
        return self

    def aggregation_weights(self, X=None) -> np.ndarray:
        """The softmax weights: coarse [P], medium [Q, P], fine [Q, P, Q] (tau, model, nu);
        with local=True they depend on x, so X [N, D] is required and they gain a leading N."""
        check_is_fitted(self)
        local = self.combiner_.local
        if local and X is None:
            raise ValueError("local weights depend on x: pass X to aggregation_weights")
        if X is None:
            x = torch.zeros(1, self.n_features_in_)
        else:
            X = validate_data(self, X, reset=False)
            x = as_tensor((X - self.x_mean_) / self.x_scale_)
        with torch.no_grad():
            weights = self.combiner_.weights(x).double().numpy()
        if self.combiner_.granularity == "fine":
            weights = weights.reshape(*weights.shape[:-1], self.combiner_.models, self.combiner_.levels)
        return weights if local else weights[0]

    def score(self, X, y) -> float:
        """Negative weighted interval score of predict(X) (greater is better, as scikit-learn's
        model selection expects)."""
        return -weighted_interval_score(y, self.predict(X), self.quantiles_)
