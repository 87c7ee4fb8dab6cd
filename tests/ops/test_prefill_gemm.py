"""The prefill path of quant_matmul (moeweave.ops.prefill_gemm): the native bf16 dequantisation
against the plain-torch dequantize, under every ISA level, and whole products through panels of
torch's GEMM against the plain-torch reference (dequantise, then an fp32 matmul)."""

import pytest
import torch

import moeweave.cpu
from moeweave import _native
from moeweave.ops import prefill_gemm, quant_matmul, reference
from moeweave.quant import dequantize, quantize

# x and W rounded to bf16 (2^-9 each) and y rounded to bf16: a relative Frobenius error of a few
# 0.1 %; 1 % leaves room for small shapes.
BF16_TOLERANCE = 0.01


def _dequantize_rows(qw, begin: int, rows: int) -> torch.Tensor:
    out = torch.empty(rows, qw.k, dtype=torch.bfloat16)
    prefill_gemm.dequantize_rows(_native.module_for("cpu"), qw, begin, out)
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [32, 64, None])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_rows_matches_torch(isa, bits, sym, group, scale_dtype):
    generator = torch.Generator().manual_seed(bits * 10 + sym)
    for n, k in [(45, 200), (16, 64), (130, 77)]:
        qw = quantize(
            torch.randn(n, k, generator=generator),
            bits=bits,
            group_size=group,
            sym=sym,
            scale_dtype=scale_dtype,
        )
        expected = dequantize(qw).bfloat16()  # [n, k]
        for begin, rows in [(0, n), (16, n - 16), (0, 16)]:
            assert torch.equal(_dequantize_rows(qw, begin, rows), expected[begin : begin + rows])


def test_dequantize_rows_rejects_bad_ranges():
    qw = quantize(torch.randn(40, 64))
    with pytest.raises(ValueError, match="row_begin a multiple of 16"):
        _dequantize_rows(qw, 8, 16)
    with pytest.raises(ValueError, match="inside the weight's 40"):
        _dequantize_rows(qw, 32, 16)
    with pytest.raises(ValueError, match="must have 64 columns"):
        prefill_gemm.dequantize_rows(
            _native.module_for("cpu"), qw, 0, torch.empty(16, 63, dtype=torch.bfloat16)
        )


@pytest.fixture
def gemm_everywhere(monkeypatch):
    """Sends every product down the GEMM path, through panels of 16 rows, and counts its calls."""
    calls = []
    original = prefill_gemm.dequantized_gemm

    def counted(*args):
        calls.append(args[1].shape[0])
        return original(*args)

    monkeypatch.setattr(prefill_gemm, "GEMM_ROWS", 1)
    monkeypatch.setattr(prefill_gemm, "GEMM_MIN_VALUES", 0)
    monkeypatch.setattr(moeweave.cpu, "has_amx_bf16", lambda: True)
    monkeypatch.setattr(prefill_gemm, "dequantized_gemm", counted)
    monkeypatch.setattr(prefill_gemm, "PANEL_BYTES", 2 * 16 * 96)  # 16-row panels at k = 96
    return calls


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_path_matches_reference(gemm_everywhere, bits, dtype):
    generator = torch.Generator().manual_seed(bits)
    qw = quantize(torch.randn(70, 96, generator=generator), bits=bits, group_size=32, sym=False)
    x = torch.randn(9, 96, generator=generator).to(dtype)
    y = quant_matmul(x, qw)
    assert gemm_everywhere == [9]
    assert y.shape == (9, 70) and y.dtype == dtype
    expected = reference.quant_matmul(x.float(), qw)
    assert float((y.float() - expected).norm() / expected.norm()) < BF16_TOLERANCE


def test_narrow_products_stay_on_the_integer_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(moeweave.cpu, "has_amx_bf16", lambda: True)
    monkeypatch.setattr(prefill_gemm, "dequantized_gemm", lambda *args: calls.append(args))
    qw = quantize(torch.randn(2048, 512))  # 1 M values: large enough
    quant_matmul(torch.randn(prefill_gemm.GEMM_ROWS - 1, 512), qw)
    quant_matmul(torch.randn(4, 64), quantize(torch.randn(16, 64)))
    assert calls == []
