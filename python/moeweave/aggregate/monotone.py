"""Non-crossing quantiles: three ways to make each row of a prediction non-decreasing across
levels. Sorting and the isotonic (L2) projection can only lower the summed pinball loss, for
every target (Fakoor et al., Proposition 1), so they are free improvements of any aggregator.
The min-max sweep instead only ever widens the intervals around the median, which keeps a
conformal coverage guarantee intact after per-interval offsets have been added.

Dimension legend: N samples, Q quantile levels (columns in increasing level order).
"""

import numpy as np

from moeweave.aggregate.levels import check_quantiles

METHODS = ("sort", "isotonic", "minmax")


def _rows(q) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    if q.ndim != 2:
        raise ValueError(f"predicted quantiles must be 2-D [N, Q], got shape {q.shape}")
    return q


def sort_quantiles(q) -> np.ndarray:
    """Each row sorted: [N, Q] -> [N, Q]."""
    return np.sort(_rows(q), axis=1)


def _pava(row: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing vector nearest to `row` in L2, equal weights.
    Blocks are kept as (mean, size); a new value merges backwards while it breaks the order."""
    means: list[float] = []
    sizes: list[int] = []
    for value in row:
        means.append(float(value))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            mean, size = means.pop(), sizes.pop()
            means[-1] = (means[-1] * sizes[-1] + mean * size) / (sizes[-1] + size)
            sizes[-1] += size
    return np.repeat(means, sizes)


def isotonic_quantiles(q) -> np.ndarray:
    """Each row projected onto non-decreasing vectors (PAVA): [N, Q] -> [N, Q]. Rows that
    already are monotone come back unchanged, so only crossing rows pay the Python loop."""
    q = _rows(q)
    out = q.copy()
    crossing = np.flatnonzero(np.any(np.diff(q, axis=1) < 0, axis=1))  # [C]
    for i in crossing:
        out[i] = _pava(q[i])
    return out


def minmax_sweep(q, quantiles) -> np.ndarray:
    """Sweep outward from the level nearest 0.5: each upper level becomes the running maximum
    of itself and the levels between it and the median, each lower level the running minimum.
    [N, Q] -> [N, Q]; the median column is untouched and no interval gets narrower."""
    q = _rows(q)
    levels = check_quantiles(quantiles)
    if q.shape[1] != levels.size:
        raise ValueError(f"predictions have {q.shape[1]} columns but quantiles has {levels.size} levels")
    middle = int(np.argmin(np.abs(levels - 0.5)))
    out = q.copy()
    out[:, middle:] = np.maximum.accumulate(q[:, middle:], axis=1)
    out[:, : middle + 1] = np.minimum.accumulate(q[:, middle::-1], axis=1)[:, ::-1]
    return out


def monotonise(q, quantiles, method: str | None) -> np.ndarray:
    """Dispatch on `method` ("sort", "isotonic", "minmax" or None for no change): [N, Q] -> [N, Q]."""
    if method is None:
        return _rows(q)
    if method == "sort":
        return sort_quantiles(q)
    if method == "isotonic":
        return isotonic_quantiles(q)
    if method == "minmax":
        return minmax_sweep(q, quantiles)
    raise ValueError(f"noncross must be one of {METHODS} or None, got {method!r}")
