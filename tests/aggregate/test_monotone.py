"""Non-crossing quantiles: sorting and the isotonic projection never raise the summed pinball
loss, for any prediction and any target (Fakoor et al., Proposition 1; property-tested with
hypothesis); PAVA agrees with scikit-learn's isotonic_regression; the min-max sweep leaves the
median alone and never narrows an interval."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.isotonic import isotonic_regression

from moeweave.aggregate import isotonic_quantiles, minmax_sweep, monotonise, sort_quantiles

# Summed pinball losses of the same row are compared after a projection that averages values:
# allow the rounding of those averages, relative to the magnitudes involved.
RTOL = 1e-9

# Fixed examples (derandomize) and no example database: the same cases every run, no files.
DETERMINISTIC = dict(derandomize=True, database=None, deadline=None)
values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def forecasts(draw):
    """Levels [Q] (strictly increasing in (0, 1)), predictions [N, Q] that may cross, targets [N]."""
    q = draw(st.integers(1, 9))
    n = draw(st.integers(1, 6))
    levels = draw(
        st.lists(st.floats(0.001, 0.999), min_size=q, max_size=q, unique=True)
        .map(sorted)
        .filter(lambda ls: np.all(np.diff(ls) > 0))
    )
    prediction = draw(arrays(np.float64, (n, q), elements=values))
    y = draw(arrays(np.float64, (n,), elements=values))
    return np.array(levels), prediction, y


def summed_pinball(y, q, levels):
    """Per-row sum over levels of max(tau u, (tau - 1) u), written out as the paper does."""
    u = y[:, None] - q
    return np.where(u >= 0, levels * u, (levels - 1) * u).sum(axis=1)


@pytest.mark.parametrize("method", [sort_quantiles, isotonic_quantiles], ids=["sort", "isotonic"])
@settings(max_examples=200, **DETERMINISTIC)
@given(data=forecasts())
def test_never_increases_summed_pinball_loss(method, data):
    levels, prediction, y = data
    fixed = method(prediction)
    assert np.all(np.diff(fixed, axis=1) >= 0)
    before, after = summed_pinball(y, prediction, levels), summed_pinball(y, fixed, levels)
    scale = np.abs(prediction).sum(axis=1) + np.abs(y) * len(levels) + 1.0
    assert np.all(after <= before + RTOL * scale)


@settings(max_examples=100, **DETERMINISTIC)
@given(prediction=arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 12)), elements=values))
def test_pava_matches_scikit_learn(prediction):
    expected = np.stack([isotonic_regression(row) for row in prediction])
    np.testing.assert_allclose(isotonic_quantiles(prediction), expected, rtol=1e-12, atol=1e-9)


@settings(max_examples=100, **DETERMINISTIC)
@given(data=forecasts())
def test_minmax_sweep_keeps_the_median_and_only_widens(data):
    levels, prediction, _ = data
    swept = minmax_sweep(prediction, levels)
    middle = int(np.argmin(np.abs(levels - 0.5)))
    assert np.all(np.diff(swept, axis=1) >= 0)
    np.testing.assert_array_equal(swept[:, middle], prediction[:, middle])
    assert np.all(swept[:, :middle] <= prediction[:, :middle])
    assert np.all(swept[:, middle + 1 :] >= prediction[:, middle + 1 :])


def test_monotone_rows_are_left_alone():
    levels = np.array([0.1, 0.5, 0.9])
    prediction = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    for method in ("sort", "isotonic", "minmax", None):
        np.testing.assert_array_equal(monotonise(prediction, levels, method), prediction)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match=r"noncross must be one of .* got 'cummax'"):
        monotonise(np.zeros((1, 3)), [0.1, 0.5, 0.9], "cummax")


def test_one_dimensional_predictions_are_refused():
    with pytest.raises(ValueError, match=r"must be 2-D \[N, Q\]"):
        sort_quantiles(np.zeros(3))
