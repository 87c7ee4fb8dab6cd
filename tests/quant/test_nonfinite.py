"""quantize refuses NaN and infinities (it used to turn a NaN into the minimum code and zero the
rest of its group), naming the first bad value and its index; finite weights at the edge of the
dtype's range still quantise."""

import pytest
import torch

from moeweave.quant import quantize
from moeweave.quant.finite import require_finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_refuses_non_finite(bad, bits, sym, dtype):
    w = torch.randn(19, 111).to(dtype)  # odd sizes: the bad value sits in a padded tile and group
    w[3, 17] = bad
    w[18, 110] = float("nan")  # a later one: the first in row-major order is named
    with pytest.raises(ValueError, match=rf"^quantize: 'w': non-finite value {bad} at \[3, 17\]$"):
        quantize(w, bits=bits, sym=sym)


def test_finite_extremes_still_quantise():
    w = torch.randn(16, 64)
    w[0, 0] = torch.finfo(torch.float32).max / 4
    w[1, 1] = torch.finfo(torch.float32).tiny
    qw = quantize(w, bits=8)
    assert qw.scales.isfinite().all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_require_finite_names_slices_in_their_tensor(bad, dtype):
    w = torch.zeros(5, 7, dtype=dtype)
    require_finite(w, "fused", at=(2,))
    w[4, 6] = bad
    with pytest.raises(ValueError, match=rf"^fused: non-finite value {bad} at \[2, 4, 6\]$"):
        require_finite(w, "fused", at=(2,))
    with pytest.raises(ValueError, match=rf"^column: non-finite value {bad} at \[4\]$"):
        require_finite(w.t()[6], "column")  # a strided view
    require_finite(torch.empty(0, 3, dtype=dtype), "empty")
    require_finite(torch.arange(6), "integers")  # not floating point: nothing to check
