"""Quantile levels: the one check every public function runs on them, and the pairing of lower
and upper levels into central intervals that conformal calibration and the interval metrics use.

Dimension legend: Q quantile levels, K central intervals (pairs of levels around the median).
"""

import numpy as np


def check_quantiles(quantiles, name: str = "quantiles") -> np.ndarray:
    """The levels as a float array [Q]; ValueError unless they are finite, inside the open
    interval (0, 1) and strictly increasing (the monotonisers and the crossing penalty read the
    column order as the level order)."""
    try:
        levels = np.asarray(quantiles, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a sequence of numbers, got {quantiles!r}") from error
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {levels.shape}")
    outside = levels[~((levels > 0) & (levels < 1))]
    if outside.size:
        raise ValueError(f"{name} must lie strictly inside (0, 1); got {outside.tolist()}")
    if np.any(np.diff(levels) <= 0):
        raise ValueError(f"{name} must be strictly increasing (sorted, no duplicates); got {levels.tolist()}")
    return levels


def interval_pairs(quantiles) -> list[tuple[int, int, float]]:
    """The central intervals the levels form, outermost first: (lower column, upper column,
    miscoverage alpha = 1 - (tau_upper - tau_lower)) for columns k and Q-1-k. ValueError when
    a pair does not straddle the median, since then it is not an interval around the centre."""
    levels = check_quantiles(quantiles)
    pairs = []
    for k in range(levels.size // 2):
        lower, upper = k, levels.size - 1 - k
        if not levels[lower] < 0.5 < levels[upper]:
            raise ValueError(
                f"quantiles {levels.tolist()} do not pair into central intervals: level "
                f"{levels[lower]} (column {lower}) pairs with {levels[upper]} (column {upper}), "
                "and a pair must straddle 0.5"
            )
        pairs.append((lower, upper, float(1.0 - (levels[upper] - levels[lower]))))
    if not pairs:
        raise ValueError(f"quantiles {levels.tolist()} form no interval: need at least two levels")
    return pairs
