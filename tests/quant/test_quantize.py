"""Quantisers and the packed format: packing round trips, dequantisation against a direct
per-group computation, and the error of each bitwidth and method (stated bounds)."""

import pytest
import torch

from moeweave.quant import QuantizedWeight, dequantize, quantize, relative_error
from moeweave.quant.format import padded
from moeweave.quant.pack import pack, unpack

# Relative Frobenius error on Gaussian weights, group 64 (measured: see docs/quantization.md).
ERROR_BOUND = {
    (8, "rtn"): 0.01, (8, "mse"): 0.01,
    (4, "rtn"): 0.12, (4, "mse"): 0.11,
    (3, "rtn"): 0.27, (3, "mse"): 0.21,
    (2, "rtn"): 0.75, (2, "mse"): 0.45,
}  # fmt: skip


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize(("rows", "cols"), [(16, 32), (48, 96), (160, 256)])
def test_pack_round_trip(bits, rows, cols):
    q = torch.randint(0, 1 << bits, (rows, cols), dtype=torch.uint8)
    assert torch.equal(unpack(pack(q, bits), bits), q)


def _direct_rtn(w: torch.Tensor, bits: int, group: int, sym: bool) -> torch.Tensor:
    """Round-to-nearest, written independently of moeweave.quant: one group at a time."""
    n, k = w.shape
    out = torch.empty(n, k)
    for r in range(n):
        for start in range(0, k, group):
            g = w[r, start : start + group].double()
            if sym:
                scale = float(g.abs().max()) / (2 ** (bits - 1) - 1)
                scale = float(torch.tensor(scale).to(torch.float32)) or 1.0
                q = torch.clamp(torch.round(g / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                out[r, start : start + group] = (q * scale).float()
            else:
                lo, hi = min(float(g.min()), 0.0), max(float(g.max()), 0.0)
                scale = (hi - lo) / (2**bits - 1)
                scale = float(torch.tensor(scale).to(torch.float32)) or 1.0
                zero = min(max(round(-lo / scale), 0), 2**bits - 1)
                q = torch.clamp(torch.round(g / scale) + zero, 0, 2**bits - 1)
                out[r, start : start + group] = ((q - zero) * scale).float()
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(
    ("n", "k", "group"), [(1, 32, 32), (7, 19, 32), (19, 111, 64), (5, 256, 128), (3, 96, None)]
)
def test_rtn_dequantises_to_the_direct_computation(bits, sym, n, k, group):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n * k + bits))
    qw = quantize(w, bits=bits, group_size=group, sym=sym, scale_dtype=torch.float32, method="rtn")
    expected = _direct_rtn(w, bits, group or padded(k, 32), sym)
    torch.testing.assert_close(dequantize(qw), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("method", ["rtn", "mse"])
def test_error_bounds_and_mse_never_worse(bits, method):
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(bits))
    error = relative_error(w, quantize(w, bits=bits, group_size=64, method=method))
    assert error < ERROR_BOUND[(bits, method)]
    if method == "mse":
        assert error <= relative_error(w, quantize(w, bits=bits, group_size=64, method="rtn")) + 1e-6


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_dtypes_and_size(scale_dtype):
    w = torch.randn(100, 300)
    qw = quantize(w, bits=4, group_size=32, sym=False, scale_dtype=scale_dtype)
    assert qw.scales.dtype == scale_dtype and qw.zeros.dtype == scale_dtype
    assert relative_error(w, qw) < ERROR_BOUND[(4, "rtn")]
    groups = padded(300, 32) // 32
    assert qw.nbytes == 112 * padded(300, 32) // 2 + 2 * 112 * groups * torch.finfo(scale_dtype).bits // 8


def test_empty_and_degenerate_weights():
    assert quantize(torch.zeros(0, 64)).n == 0
    zeros = quantize(torch.zeros(16, 64), bits=2, sym=False)
    assert torch.equal(dequantize(zeros), torch.zeros(16, 64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 5}, "bits must be one of"),
        ({"group_size": 48}, "multiple of 32"),
        ({"scale_dtype": torch.float64}, "scale_dtype"),
        ({"method": "gptq"}, "method must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize(torch.randn(16, 64), **kwargs)


def test_inconsistent_weight_is_refused():
    qw = quantize(torch.randn(16, 64), bits=4)
    with pytest.raises(ValueError, match=r"'packed' must be torch\.uint8"):
        QuantizedWeight(qw.packed[:, :1], qw.scales, None, 16, 64, 4, 64)
