"""quant_matmul against the plain-torch reference (dequantise, then an fp32 matmul), under every
ISA level; and every SIMD level against the scalar kernel, which shares their integer math."""

import pytest
import torch

import moeweave.cpu
from moeweave.ops import quant_matmul, reference
from moeweave.quant import quantize

# Relative Frobenius error vs exact activations: the int8 activation quantisation (per 32
# columns) costs about 0.5 %; 1.5 % leaves room for small, unlucky shapes.
ACTIVATION_TOLERANCE = 0.015
# (M, N, K): up to 4 rows pair far-apart tiles (an odd count leaves one alone), more rows
# adjacent tiles in blocks of 4 rows.
SHAPES = [(1, 1, 1), (1, 7, 19), (2, 64, 160), (4, 19, 111), (7, 111, 64), (19, 16, 256), (3, 33, 96)]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128, None])
@pytest.mark.parametrize(("m", "n", "k"), SHAPES, ids=str)
def test_matches_reference(isa, bits, sym, group, m, n, k):
    generator = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    w, x = torch.randn(n, k, generator=generator), torch.randn(m, k, generator=generator)
    qw = quantize(w, bits=bits, group_size=group, sym=sym)
    y = quant_matmul(x, qw)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert _relative(y, reference.quant_matmul(x, qw)) < ACTIVATION_TOLERANCE


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_simd_equals_scalar(bits, scale_dtype):
    generator = torch.Generator().manual_seed(bits)
    w, x = torch.randn(45, 200, generator=generator), torch.randn(9, 200, generator=generator)
    for sym in (True, False):
        qw = quantize(w, bits=bits, group_size=64, sym=sym, scale_dtype=scale_dtype)
        with moeweave.cpu.use_isa("scalar"):
            expected = quant_matmul(x, qw)
        for level in moeweave.cpu.supported_isas():
            with moeweave.cpu.use_isa(level):
                torch.testing.assert_close(quant_matmul(x, qw), expected, rtol=1e-5, atol=1e-5)


def test_wide_products_walk_rows_in_blocks():
    """Rows x columns enough for the AVX-512 kernel to walk the rows in several cache-sized blocks
    (32 rows of 8192 columns each, then a ragged 6): every level equals the scalar kernel."""
    generator = torch.Generator().manual_seed(3)
    w, x = torch.randn(48, 8192, generator=generator), torch.randn(70, 8192, generator=generator)
    qw = quantize(w, bits=4, group_size=64)
    with moeweave.cpu.use_isa("scalar"):
        expected = quant_matmul(x, qw)
    for level in moeweave.cpu.supported_isas():
        with moeweave.cpu.use_isa(level):
            # The same integer sums; only the fp32 additions of 256 units differ in order.
            torch.testing.assert_close(quant_matmul(x, qw), expected, rtol=1e-4, atol=1e-4)


def test_bf16_activations_and_large_prefill(isa):
    generator = torch.Generator().manual_seed(7)
    w, x = torch.randn(300, 512, generator=generator), torch.randn(130, 512, generator=generator).bfloat16()
    qw = quantize(w, bits=4, group_size=128)
    y = quant_matmul(x, qw)
    assert y.dtype == torch.bfloat16
    assert _relative(y, reference.quant_matmul(x, qw)) < ACTIVATION_TOLERANCE


def test_empty_batch():
    qw = quantize(torch.randn(16, 64))
    assert quant_matmul(torch.empty(0, 64), qw).shape == (0, 16)


def test_wrong_activation_width_is_named():
    with pytest.raises(ValueError, match=r"'x' must be \[M, 64\]"):
        quant_matmul(torch.randn(2, 65), quantize(torch.randn(16, 64)))


def test_opcheck_and_compile():
    qw = quantize(torch.randn(40, 96), bits=4, group_size=32, sym=False)
    x = torch.randn(3, 96)
    torch.library.opcheck(
        torch.ops.moeweave.quant_matmul.default,
        (x, qw.packed, qw.scales, qw.zeros, qw.n, qw.k, qw.bits, qw.group_size),
    )
    compiled = torch.compile(lambda x: quant_matmul(x, qw) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), quant_matmul(x, qw) * 2)


@pytest.mark.parametrize(("m", "n", "k"), [(1, 7, 19), (3, 111, 256), (8, 33, 1000)])
def test_bf16_matmul_matches_torch(isa, m, n, k):
    from moeweave.ops import bf16_matmul

    generator = torch.Generator().manual_seed(m + n + k)
    w, x = (
        torch.randn(n, k, generator=generator).bfloat16(),
        torch.randn(m, k, generator=generator).bfloat16(),
    )
    expected = x.float() @ w.float().t()
    torch.testing.assert_close(bf16_matmul(x, w).float(), expected, rtol=1e-2, atol=1e-2)
