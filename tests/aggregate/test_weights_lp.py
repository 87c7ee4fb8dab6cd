"""The trained weights solve the paper's problem: on a tiny data set, the coarse and medium
weights that Adam finds through the softmax match the exact minimiser of the summed pinball loss
over the simplex, a linear program solved by scipy.optimize.linprog (HiGHS); fine weights reach
the LP's loss."""

import numpy as np
import pytest
from column_quantiles import column_library
from scipy.optimize import linprog

from moeweave.aggregate import QuantileAggregator, pinball_loss

LEVELS = np.array([0.1, 0.5, 0.9])
N, P = 40, 3
# Adam on a piecewise-linear loss ends in a small oscillation around the LP's kink and the
# softmax only approaches zero weights: weights agree to 0.02 and the loss to 0.5 %.
WEIGHT_ATOL, LOSS_RTOL = 0.02, 5e-3


@pytest.fixture(scope="module")
def problem():
    """Base predictions [N, P, Q] around a truth that model 0 tracks best, and targets [N]."""
    rng = np.random.default_rng(7)
    truth = rng.normal(size=N)
    spread = np.array([-1.28, 0.0, 1.28])  # N(0, 1) quantiles at LEVELS
    base = np.stack(
        [
            truth[:, None] + noise * rng.normal(size=(N, 1)) + width * spread
            for noise, width in [(0.3, 1.0), (0.6, 0.7), (0.9, 1.4)]
        ],
        axis=1,
    )  # [N, P, Q]
    y = truth + rng.normal(size=N)
    return base, y


def lp_simplex_pinball(features, y, level_of_row):
    """min over w in the simplex of sum_r psi_{tau_r}(y_r - features_r . w), as an LP in
    (w, u+, u-): features w + u+ - u- = y, sum w = 1, all >= 0. features [R, S], y [R]."""
    rows, sources = features.shape
    cost = np.concatenate([np.zeros(sources), level_of_row, 1 - level_of_row]) / rows
    equalities = np.block(
        [[features, np.eye(rows), -np.eye(rows)], [np.ones((1, sources)), np.zeros((1, 2 * rows))]]
    )
    result = linprog(cost, A_eq=equalities, b_eq=np.append(y, 1.0), bounds=(0, None), method="highs")
    assert result.status == 0, result.message
    return result.x[:sources]


def fit(granularity, base, y):
    model = QuantileAggregator(
        column_library(P, LEVELS.size),
        quantiles=LEVELS,
        granularity=granularity,
        noncross=None,
        cv=2,
        validation_fraction=0.0,  # the LP sees every row, so the weights must too
        max_epochs=1500,
        batch_size=N,
        learning_rate=0.02,
        random_state=0,
    )
    return model.fit(base.reshape(N, -1), y)


def test_coarse_weights_match_the_lp(problem):
    base, y = problem
    # one weight vector for every (row, level): stack the levels as rows
    features = base.transpose(2, 0, 1).reshape(-1, P)  # [Q * N, P]
    expected = lp_simplex_pinball(features, np.tile(y, LEVELS.size), np.repeat(LEVELS, N))
    model = fit("coarse", base, y)
    np.testing.assert_allclose(model.aggregation_weights(), expected, atol=WEIGHT_ATOL)
    ours = pinball_loss(y, model.predict(base.reshape(N, -1)), LEVELS).sum()
    best = pinball_loss(y, np.einsum("p,npq->nq", expected, base), LEVELS).sum()
    assert ours <= best * (1 + LOSS_RTOL)


def test_medium_weights_match_the_lp(problem):
    base, y = problem
    model = fit("medium", base, y)
    weights = model.aggregation_weights()  # [Q, P]
    prediction = model.predict(base.reshape(N, -1))
    for k, tau in enumerate(LEVELS):
        expected = lp_simplex_pinball(base[:, :, k], y, np.full(N, tau))
        np.testing.assert_allclose(weights[k], expected, atol=WEIGHT_ATOL)
        best = pinball_loss(y, (base[:, :, k] @ expected)[:, None], [tau])[0]
        assert pinball_loss(y, prediction[:, [k]], [tau])[0] <= best * (1 + LOSS_RTOL)


def test_fine_loss_matches_the_lp(problem):
    # Fine weights mix all P * Q columns, which are nearly collinear (each model's levels are
    # one curve shifted), so the LP's minimisers form a face and only the loss is unique.
    base, y = problem
    prediction = fit("fine", base, y).predict(base.reshape(N, -1))
    for k, tau in enumerate(LEVELS):
        expected = lp_simplex_pinball(base.reshape(N, -1), y, np.full(N, tau))
        best = pinball_loss(y, (base.reshape(N, -1) @ expected)[:, None], [tau])[0]
        assert pinball_loss(y, prediction[:, [k]], [tau])[0] <= best * (1 + LOSS_RTOL)
