"""moeweave::rms_norm against transformers' own RMSNorm module, under every ISA level."""

import pytest
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRMSNorm

from moeweave.ops import rms_norm

# fp32: the row sum is accumulated in a different order. Half types: both sides round the
# normalised row and the product once, so a value may land one step apart.
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}


def oracle(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = Qwen3MoeRMSNorm(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", [(1, 2048), (3, 5, 64), (7, 4, 19), (1, 1), (300, 128)], ids=str)
def test_matches_transformers(isa, dtype, shape):
    generator = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=generator) * 3).to(dtype)
    weight = torch.randn(shape[-1], generator=generator).to(dtype)
    out = rms_norm(x, weight, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, oracle(x, weight, 1e-6), **TOLERANCE[dtype])


def test_non_contiguous_input_and_empty_rows():
    x = torch.randn(6, 32)[::2]
    weight = torch.randn(32)
    torch.testing.assert_close(rms_norm(x, weight, 1e-5), oracle(x, weight, 1e-5), **TOLERANCE[torch.float32])
    assert rms_norm(torch.empty(0, 32), weight, 1e-5).shape == (0, 32)


def test_opcheck_and_compile():
    x, weight = torch.randn(3, 16), torch.randn(16)
    torch.library.opcheck(torch.ops.moeweave.rms_norm.default, (x, weight, 1e-6))
    compiled = torch.compile(lambda x, w: rms_norm(x * 2, w, 1e-6), fullgraph=True)
    torch.testing.assert_close(compiled(x, weight), oracle(x * 2, weight, 1e-6), **TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    ("x", "weight", "message"),
    [
        (torch.randn(2, 8), torch.randn(7), "'weight' must be \\[8\\]"),
        (torch.randn(2, 8), torch.randn(8).double(), "'weight' must have the dtype of 'x'"),
        (torch.randn(2, 8).double(), torch.randn(8).double(), "'x' must be float32"),
    ],
)
def test_bad_input_is_named(x, weight, message):
    with pytest.raises(ValueError, match=message):
        rms_norm(x, weight, 1e-6)
