"""moeweave::rope against transformers' own apply_rotary_pos_emb (the oracle)."""

import pytest
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import apply_rotary_pos_emb

from moeweave.models.layers import RopeTable
from moeweave.ops import rope


def oracle(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers rotates [B, H, S, D] with cos, sin [B, S, D]; x here is [B, S, H, D]."""
    batch = x.shape[0]
    q = x.transpose(1, 2)
    rotated, _ = apply_rotary_pos_emb(q, q, cos.expand(batch, -1, -1), sin.expand(batch, -1, -1))
    return rotated.transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 32, 128), (2, 7, 4, 64), (3, 2, 1, 16), (1, 200, 2, 8)], ids=str)
def test_matches_transformers_bit_for_bit(dtype, shape):
    seq, dim = shape[1], shape[3]
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(dim)) * 3).to(dtype)
    cos, sin = RopeTable(dim, 10000.0, dtype)(5, seq)
    out = rope(x, cos, sin)
    assert out.shape == x.shape and out.dtype == dtype
    # Both round each product and the sum to the dtype, so the results are the same bits.
    torch.testing.assert_close(out, oracle(x, cos, sin), rtol=0, atol=0)


def test_non_contiguous_input_opcheck_and_compile():
    x = torch.randn(2, 3, 8, 16).transpose(1, 2)  # [2, 8, 3, 16] view
    cos, sin = RopeTable(16, 10000.0, torch.float32)(0, 8)
    torch.testing.assert_close(rope(x, cos, sin), oracle(x, cos, sin))
    torch.library.opcheck(torch.ops.moeweave.rope.default, (x.contiguous(), cos, sin))
    compiled = torch.compile(lambda x, c, s: rope(x * 2, c, s), fullgraph=True)
    torch.testing.assert_close(compiled(x, cos, sin), oracle(x * 2, cos, sin))


@pytest.mark.parametrize(
    ("x", "cos", "message"),
    [
        (torch.randn(1, 2, 3, 7), torch.randn(2, 7), "even D"),
        (torch.randn(1, 2, 3, 8), torch.randn(3, 8), "'cos' must be"),
        (torch.randn(1, 2, 3, 8), torch.randn(2, 8).double(), "'cos' must be"),
        (torch.randn(2, 3, 8), torch.randn(3, 8), "must be \\[B, S, H, D\\]"),
    ],
)
def test_bad_input_is_named(x, cos, message):
    with pytest.raises(ValueError, match=message):
        rope(x, cos, cos)
