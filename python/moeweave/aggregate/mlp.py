"""A small torch quantile MLP, the neural member of the default base library: one network with
a head of Q outputs, trained on the summed pinball loss of standardised targets. Also the MLP
trunk that the local (DQA) combiner reuses to read weights off the features.

Dimension legend: N samples, D features, Q quantile levels, H hidden width.
"""

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from moeweave.aggregate.levels import check_quantiles
from moeweave.aggregate.training import (
    TrainingConfig,
    as_tensor,
    draw_seed,
    fit_module,
    location_scale,
    pinball_sum,
    seeded,
)


def make_mlp(in_features: int, hidden_sizes) -> tuple[torch.nn.Sequential, int]:
    """Linear-ReLU layers [N, D] -> [N, H]; returns the trunk and H (D when there are none)."""
    layers: list[torch.nn.Module] = []
    width = in_features
    for hidden in hidden_sizes:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    return torch.nn.Sequential(*layers), width


class QuantileMLP(BaseEstimator):
    """Feed-forward quantile regressor: predict(X [N, D]) -> [N, Q] at `quantiles`.

    Features and target are standardised with the training statistics; training is Adam with
    early stopping on a `validation_fraction` split (see moeweave.aggregate.training)."""

    def __init__(
        self,
        quantiles=(0.1, 0.5, 0.9),
        hidden_sizes=(64, 64),
        learning_rate=3e-3,
        max_epochs=500,
        patience=20,
        batch_size=64,
        validation_fraction=0.2,
        random_state=None,
    ):
        self.quantiles = quantiles
        self.hidden_sizes = hidden_sizes
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X, y):
        levels = check_quantiles(self.quantiles)
        X, y = validate_data(self, X, y, y_numeric=True)
        self.x_mean_, self.x_scale_ = location_scale(X)
        self.y_mean_, self.y_scale_ = location_scale(y)
        config = TrainingConfig.of(self, draw_seed(check_random_state(self.random_state)))
        with seeded(config.seed):
            trunk, width = make_mlp(X.shape[1], self.hidden_sizes)
            network = torch.nn.Sequential(trunk, torch.nn.Linear(width, levels.size))
        levels_t = as_tensor(levels)  # [Q]
        self.network_ = fit_module(
            network,
            (as_tensor((X - self.x_mean_) / self.x_scale_),),
            as_tensor((y - self.y_mean_) / self.y_scale_),
            lambda prediction, target: pinball_sum(prediction, target, levels_t),
            config,
        )
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        with torch.no_grad():
            scaled = self.network_(as_tensor((X - self.x_mean_) / self.x_scale_)).double().numpy()  # [N, Q]
        return self.y_mean_ + self.y_scale_ * scaled
