"""Scores of quantile forecasts: pinball loss per level, the weighted interval score (WIS), and
the empirical coverage and mean width of an interval. Costs are lower-is-better; all average
over samples.

Dimension legend: N samples, Q quantile levels.
"""

import numpy as np

from moeweave.aggregate.levels import check_quantiles


def _forecast(y, q, quantiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float)  # [N]
    q = np.asarray(q, dtype=float)  # [N, Q]
    levels = check_quantiles(quantiles)  # [Q]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D [N], got shape {y.shape}")
    if q.shape != (y.size, levels.size):
        raise ValueError(
            f"predictions must be [N, Q] = [{y.size}, {levels.size}] (one column per level), got {q.shape}"
        )
    return y, q, levels


def pinball_loss(y, q, quantiles) -> np.ndarray:
    """Mean pinball loss per level [Q]: psi_tau(u) = max(tau * u, (tau - 1) * u), u = y - q.
    y [N] targets, q [N, Q] predicted quantiles, quantiles [Q] their levels."""
    y, q, levels = _forecast(y, q, quantiles)
    u = y[:, None] - q  # [N, Q]
    return np.maximum(levels * u, (levels - 1) * u).mean(axis=0)


def weighted_interval_score(y, q, quantiles) -> float:
    """WIS = (2 / Q) * sum over levels of the mean pinball loss, i.e. twice the mean over levels.
    For levels that are K symmetric pairs plus the median (Q = 2K + 1) this is exactly the WIS of
    Bracher et al. (2021): (|y - m| / 2 + sum_k alpha_k / 2 * IS_alpha_k) / (K + 1/2)."""
    return float(2.0 * pinball_loss(y, q, quantiles).mean())


def interval_coverage(y, lower, upper) -> float:
    """Fraction of samples with lower <= y <= upper; y, lower, upper [N]."""
    y, lower, upper = (np.asarray(a, dtype=float) for a in (y, lower, upper))
    if not y.shape == lower.shape == upper.shape or y.ndim != 1:
        raise ValueError(
            f"y, lower, upper must be 1-D of one length, got {y.shape}, {lower.shape}, {upper.shape}"
        )
    return float(np.mean((lower <= y) & (y <= upper)))


def interval_width(lower, upper) -> float:
    """Mean of upper - lower over samples; lower, upper [N]. Infinite when any bound is."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    if lower.shape != upper.shape or lower.ndim != 1:
        raise ValueError(f"lower and upper must be 1-D of one length, got {lower.shape}, {upper.shape}")
    return float(np.mean(upper - lower))
