"""Conformalized quantile regression (Romano, Patterson, Candes 2019): widen (or narrow) a
predicted interval [l(x), u(x)] by the finite-sample quantile of the scores
E_i = max(l(X_i) - Y_i, Y_i - u(X_i)) so that it covers a new exchangeable Y with probability at
least 1 - alpha. Split CQR uses one calibration set; CV+ reuses every training point through
K-fold refits (guarantee 1 - 2 alpha, about 1 - alpha in practice).

Dimension legend: N calibration samples, M test samples, Q quantile levels, K central intervals,
F folds.
"""

import math

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_array, check_X_y

from moeweave.aggregate.levels import check_quantiles, interval_pairs
from moeweave.aggregate.monotone import minmax_sweep

# (1 - alpha) * (n + 1) can land a hair above an integer through rounding (alpha = 0.4 from
# 1 - (0.8 - 0.2), n = 4 gives 3.0000000000000004), and ceil would then take one score too many.
_ROUNDING = 1e-9


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (the miscoverage) must lie strictly inside (0, 1), got {alpha}")
    return float(alpha)


def _rank(alpha: float, n: int) -> int:
    """The finite-sample rank ceil((1 - alpha) * (n + 1)), 1-based; may exceed n."""
    return math.ceil((1 - _check_alpha(alpha)) * (n + 1) - _ROUNDING)


def cqr_scores(lower, upper, y) -> np.ndarray:
    """Conformity scores [N]: max(lower - y, y - upper); negative inside the interval."""
    lower, upper, y = (np.asarray(a, dtype=float) for a in (lower, upper, y))
    if not lower.shape == upper.shape == y.shape or y.ndim != 1:
        raise ValueError(
            f"lower, upper, y must be 1-D of one length, got {lower.shape}, {upper.shape}, {y.shape}"
        )
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinity; calibration targets must be finite")
    return np.maximum(lower - y, y - upper)


def conformal_quantile(scores, alpha: float) -> float:
    """The ceil((1 - alpha)(n + 1))-th smallest of `scores` [N]; +inf when that rank exceeds n
    (too few calibration points for this alpha: only an infinite interval keeps the guarantee)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    rank = _rank(alpha, scores.size)
    if rank > scores.size:
        return math.inf
    return float(np.partition(scores, rank - 1)[rank - 1])


def cqr_offset(lower, upper, y, alpha: float) -> float:
    """Split CQR: the offset Q such that [lower - Q, upper + Q] has coverage >= 1 - alpha.
    lower, upper [N] are predictions on the calibration set, y [N] its targets."""
    return conformal_quantile(cqr_scores(lower, upper, y), alpha)


def calibration_offsets(q, y, quantiles) -> np.ndarray:
    """Split-CQR offsets [K], one per central interval (columns k and Q-1-k, outermost first),
    each at its own nominal miscoverage 1 - (tau_upper - tau_lower). q [N, Q], y [N]."""
    q = np.asarray(q, dtype=float)
    return np.array([cqr_offset(q[:, lo], q[:, hi], y, alpha) for lo, hi, alpha in interval_pairs(quantiles)])


def apply_offsets(q, offsets, quantiles) -> np.ndarray:
    """Calibrated quantiles [M, Q]: each interval's bounds moved out by its offset (in by a
    negative one), then the min-max sweep, which only widens, so that intervals calibrated
    separately are nested again without losing any coverage. q [M, Q], offsets [K]."""
    pairs = interval_pairs(quantiles)
    offsets = np.asarray(offsets, dtype=float)
    if offsets.shape != (len(pairs),):
        raise ValueError(
            f"offsets must be [K] = [{len(pairs)}] (one per central interval), got {offsets.shape}"
        )
    out = np.array(q, dtype=float)
    for (lo, hi, _), offset in zip(pairs, offsets, strict=True):
        out[:, lo] -= offset
        out[:, hi] += offset
    return minmax_sweep(out, quantiles)


def cv_plus_cqr(lower_oof, upper_oof, y, folds, lower_test, upper_test, alpha: float):
    """CV+ for CQR (Barber et al. 2021 applied to CQR scores). Each training point i has an
    out-of-fold interval from the model that did not see its fold folds[i]; that fold's model
    also predicts the test points. Returns (lower [M], upper [M]):
      lower(x) = the floor(alpha (n+1))-th smallest of  lower_test[folds[i]](x) - E_i,
      upper(x) = the ceil((1-alpha)(n+1))-th smallest of upper_test[folds[i]](x) + E_i,
    infinite where the rank falls outside 1..n. lower_oof, upper_oof, y, folds [N];
    lower_test, upper_test [F, M]."""
    scores = cqr_scores(lower_oof, upper_oof, y)  # [N]
    folds = np.asarray(folds)
    lower_test, upper_test = np.asarray(lower_test, dtype=float), np.asarray(upper_test, dtype=float)
    if folds.shape != scores.shape:
        raise ValueError(f"folds must be [N] = [{scores.size}], got {folds.shape}")
    if lower_test.ndim != 2 or lower_test.shape != upper_test.shape:
        raise ValueError(
            f"lower_test and upper_test must be [F, M] alike, got {lower_test.shape}, {upper_test.shape}"
        )
    if folds.min() < 0 or folds.max() >= lower_test.shape[0]:
        raise ValueError(f"folds must index the {lower_test.shape[0]} rows of lower_test/upper_test")
    n = scores.size
    rank = _rank(alpha, n)
    upper_values = upper_test[folds] + scores[:, None]  # [N, M]
    lower_values = lower_test[folds] - scores[:, None]  # [N, M]
    if rank > n:
        infinite = np.full(lower_test.shape[1], np.inf)
        return -infinite, infinite
    # floor(alpha (n + 1)) = n + 1 - ceil((1 - alpha)(n + 1)): the lower rank mirrors the upper.
    lower_rank = n + 1 - rank
    upper = np.partition(upper_values, rank - 1, axis=0)[rank - 1]  # [M]
    lower = np.partition(lower_values, lower_rank - 1, axis=0)[lower_rank - 1]  # [M]
    return lower, upper


def cv_plus_intervals(estimator, X, y, X_test, alpha: float, cv=5, random_state=None):
    """CV+ intervals at miscoverage alpha for X_test [M, D] from any estimator with a
    `quantiles` parameter that predicts [M, Q] and includes the levels alpha/2 and 1 - alpha/2
    (a QuantileAggregator, or a base model of the library). Fits one clone per fold of X [N, D],
    y [N]; cv is a fold count (shuffled with random_state) or a scikit-learn splitter.
    Returns (lower [M], upper [M])."""
    X, y = check_X_y(X, y, y_numeric=True)
    X_test = check_array(X_test)
    levels = check_quantiles(estimator.get_params()["quantiles"])
    columns = []
    for level in (_check_alpha(alpha) / 2, 1 - alpha / 2):
        matches = np.flatnonzero(np.isclose(levels, level))
        if matches.size == 0:
            raise ValueError(
                f"CV+ at alpha={alpha} needs the levels {alpha / 2:g} and {1 - alpha / 2:g} "
                f"among the estimator's quantiles {levels.tolist()}"
            )
        columns.append(int(matches[0]))
    splitter = KFold(cv, shuffle=True, random_state=random_state) if isinstance(cv, int) else cv
    folds = np.empty(y.size, dtype=int)  # [N]
    oof = np.empty((y.size, 2))  # [N, 2]
    test = []  # F x [M, 2]
    for fold, (train, held_out) in enumerate(splitter.split(X, y)):
        model = clone(estimator).fit(X[train], y[train])
        folds[held_out] = fold
        oof[held_out] = model.predict(X[held_out])[:, columns]
        test.append(model.predict(X_test)[:, columns])
    test = np.stack(test)  # [F, M, 2]
    return cv_plus_cqr(oof[:, 0], oof[:, 1], y, folds, test[..., 0], test[..., 1], alpha)
