"""Out-of-fold base predictions: the aggregator's weights must be trained on predictions the
base models made for rows they did not see, or the weights would favour whichever model
overfits most (stacking's rule). Each base model is fitted once per fold and once on all rows;
the all-rows fit predicts new data.

Dimension legend: N samples, D features, P base models, Q quantile levels.
"""

import numpy as np
from sklearn.base import clone


def _predict(name: str, model, X: np.ndarray, levels: int) -> np.ndarray:
    prediction = np.asarray(model.predict(X), dtype=float)
    if prediction.shape != (X.shape[0], levels):
        raise ValueError(
            f"base estimator {name!r} predicted shape {prediction.shape}; the aggregator needs "
            f"[N, Q] = [{X.shape[0]}, {levels}], one column per level"
        )
    if not np.all(np.isfinite(prediction)):
        raise ValueError(f"base estimator {name!r} predicted NaN or infinity")
    return prediction  # [N, Q]


def cross_fit(estimators, X, y, splitter, levels: int):
    """Out-of-fold predictions [N, P, Q] of the (name, estimator) pairs on X [N, D], y [N],
    folds from `splitter` (a scikit-learn splitter), and the pairs refitted on every row."""
    folds = list(splitter.split(X, y))
    tested = np.zeros(X.shape[0], dtype=int)  # [N]
    for _, held_out in folds:
        tested[held_out] += 1
    if np.any(tested != 1):
        raise ValueError(
            "the cv splitter must put every row in exactly one test fold (a partition, as KFold does)"
        )
    oof = np.empty((X.shape[0], len(estimators), levels))  # [N, P, Q]
    for j, (name, estimator) in enumerate(estimators):
        for train, held_out in folds:
            model = clone(estimator).fit(X[train], y[train])
            oof[held_out, j] = _predict(name, model, X[held_out], levels)
    refitted = [(name, clone(estimator).fit(X, y)) for name, estimator in estimators]
    return oof, refitted


def base_predictions(models, X, levels: int) -> np.ndarray:
    """Predictions [N, P, Q] of fitted (name, model) pairs on X [N, D]."""
    return np.stack([_predict(name, model, X, levels) for name, model in models], axis=1)
