"""The native quantiser, at every ISA level, against the plain-torch one: round-to-nearest
writes the same bytes
(packed values, scales, zeros) for every bit width, both symmetries, every scale and input
dtype, padded shapes, strided rows and the edge cases of the scale (all-zero groups, a scale
that overflows float16); the clip search finds clippings at least as good, group by group."""

import pytest
import torch

import moeweave.cpu
from moeweave import _native
from moeweave.quant import dequantize, quantize
from moeweave.quant.format import padded
from moeweave.quant.quantize import _quantize_torch

pytestmark = pytest.mark.skipif(_native.cpu_module() is None, reason="moeweave._C is not built")


def assert_same_bytes(got, expected):
    assert torch.equal(got.packed, expected.packed)
    assert torch.equal(got.scales, expected.scales)
    assert (got.zeros is None) == (expected.zeros is None)
    if got.zeros is not None:
        assert torch.equal(got.zeros, expected.zeros)
    fields = ("n", "k", "bits", "group_size")
    assert [getattr(got, f) for f in fields] == [getattr(expected, f) for f in fields]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("n", "k", "group"), [(1, 32, 32), (19, 111, 64), (40, 256, 128), (5, 70, None)])
def test_native_rtn_matches_torch(isa, bits, sym, scale_dtype, w_dtype, n, k, group):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n * k + bits)).to(w_dtype)
    args = dict(bits=bits, sym=sym, scale_dtype=scale_dtype)
    got = quantize(w, group_size=group, method="rtn", **args)
    expected = _quantize_torch(w, group=group or padded(k, 32), method="rtn", **args)
    assert_same_bytes(got, expected)


@pytest.mark.parametrize("sym", [True, False])
def test_scale_edge_cases(isa, sym):
    """Rows of zeros (scale 1), of one sign only, and values whose scale overflows float16 (an
    infinite scale quantises every value to the zero point)."""
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    w[0] = 0
    w[1] = w[1].abs()
    w[2] = -w[2].abs()
    w[3, :64] = 6e5
    w[4, 5] = 1e-30
    for scale_dtype in (torch.float16, torch.bfloat16):
        args = dict(bits=4, sym=sym, scale_dtype=scale_dtype)
        expected = _quantize_torch(w, group=64, method="rtn", **args)
        assert_same_bytes(quantize(w, method="rtn", **args), expected)


def test_strided_rows_and_gradients(isa):
    """A view whose rows are spaced out in a wider tensor, and a weight that requires grad."""
    wide = torch.randn(33, 200, generator=torch.Generator().manual_seed(2), requires_grad=True)
    w = wide[:, 8:136]
    assert w.stride(0) == 200
    got = quantize(w, bits=4, method="rtn")
    expected = _quantize_torch(w.detach().contiguous(), bits=4, group=64, sym=True,
                               scale_dtype=torch.bfloat16, method="rtn")  # fmt: skip
    assert_same_bytes(got, expected)


def test_clip_search_writes_the_same_bytes_at_every_isa_level():
    """The levels differ only in vector width: no fused multiply-adds, no reassociation."""
    w = torch.randn(48, 300, generator=torch.Generator().manual_seed(5))
    results = []
    for level in moeweave.cpu.supported_isas():
        with moeweave.cpu.use_isa(level):
            results.append(quantize(w, bits=3, method="mse"))
    for got in results[1:]:
        assert_same_bytes(got, results[0])


def test_empty_weights():
    for shape in ((0, 64), (16, 0)):
        w = torch.zeros(shape)
        assert_same_bytes(
            quantize(w, bits=8, method="rtn"),
            _quantize_torch(w, bits=8, group=64, sym=True, scale_dtype=torch.bfloat16, method="rtn"),
        )


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_native_clip_search_matches_torch(isa, bits, sym, w_dtype):
    """The same search over the same clippings: every group's squared error at most torch's
    (the native sums are in double, torch's in fp32, so a near-tie may go either way), and
    almost every group the same bytes."""
    generator = torch.Generator().manual_seed(bits)
    w = torch.randn(64, 520, generator=generator)
    w[torch.rand(w.shape, generator=generator) < 0.01] *= 8  # outliers, which clipping trims
    w = w.to(w_dtype)
    got = quantize(w, bits=bits, sym=sym, method="mse")
    expected = _quantize_torch(w, bits=bits, group=64, sym=sym, scale_dtype=torch.bfloat16, method="mse")

    def group_errors(qw):  # [N, G]
        error = torch.nn.functional.pad(dequantize(qw).double() - w.double(), (0, 56))
        return (error**2).view(64, -1, 64).sum(-1)

    assert (group_errors(got) <= group_errors(expected) * (1 + 1e-6) + 1e-12).all()
    groups_same = torch.nn.functional.pad(dequantize(got) == dequantize(expected), (0, 56), value=True)
    assert groups_same.view(64, -1, 64).all(-1).float().mean() > 0.99
