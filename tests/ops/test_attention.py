"""moeweave::attention against torch's scaled_dot_product_attention (fp32), under every ISA
level: grouped heads, cache views into larger buffers, masks, Dk != Dv. At the avx512 level on a
CPU with AVX512-BF16, bf16 attention takes the bf16 pair products."""

import pytest
import torch
import torch.nn.functional as F

from moeweave.ops import attention, reference
from moeweave.ops.attention import attention_batch

# Both sides accumulate in fp32; the half types add one rounding of the output.
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}
# (batch, heads, kv_heads, queries, keys, dk, dv)
SHAPES = [
    (1, 32, 4, 1, 160, 128, 128),  # a Qwen3-30B-A3B decode step
    (2, 8, 2, 3, 37, 40, 24),  # odd sizes, Dk != Dv (MLA's 192 / 128 in small)
    (3, 4, 4, 8, 5, 19, 19),  # multi-head, more queries than some rows can see
    (1, 6, 1, 2, 1, 16, 8),  # multi-query, a single cached key
    (1, 16, 1, 3, 70, 576, 512),  # MLA's absorbed attention over latents: one key head, wide rows
]


def oracle(q, k, v, mask, scale=None):
    out = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.nan_to_num(0.0)  # rows that may see nothing: NaN there, zeros here


def cache_views(batch, kv_heads, keys, dim, dtype, generator):
    """k or v as a decode step sees it: the first `keys` positions of a larger cache buffer."""
    buffer = torch.randn(batch, kv_heads, keys + 29, dim, generator=generator).to(dtype)
    return buffer[:, :, :keys]


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_sdpa(isa, dtype, shape):
    batch, heads, kv_heads, queries, keys, dk, dv = shape
    generator = torch.Generator().manual_seed(sum(shape))
    q = (torch.randn(batch, heads, queries, dk, generator=generator) * 2).to(dtype)
    k = cache_views(batch, kv_heads, keys, dk, dtype, generator)
    v = cache_views(batch, kv_heads, keys, dv, dtype, generator)
    mask = torch.rand(batch, 1, queries, keys, generator=generator) > 0.3
    out = attention(q, k, v, mask)
    assert out.shape == (batch, heads, queries, dv) and out.dtype == dtype
    torch.testing.assert_close(out.float(), oracle(q, k, v, mask), **TOLERANCE[dtype])


def test_causal_decode_step_with_custom_scale(isa):
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 3, 32, generator=generator)
    k, v = (cache_views(2, 2, 10, 32, torch.float32, generator) for _ in range(2))
    mask = torch.ones(10, 10, dtype=torch.bool).tril()[-3:].expand(2, 1, 3, 10)
    out = attention(q, k, v, mask, scale=0.3)
    torch.testing.assert_close(out, oracle(q, k, v, mask, scale=0.3), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("queries", "keys"), [(45, 45), (21, 5000)])
def test_causal_prompt_in_query_blocks(isa, queries, keys, dtype):
    """A prompt: a work item takes up to 16 queries (fewer over a long cache), converts each key
    block once for all of them and skips the blocks past the last key they see; left padding
    masks the first keys of the second sequence (its first query then sees nothing)."""
    generator = torch.Generator().manual_seed(queries)
    q = torch.randn(2, 8, queries, 32, generator=generator).to(dtype)
    k, v = (cache_views(2, 2, keys, 32, dtype, generator) for _ in range(2))
    mask = torch.ones(keys, keys, dtype=torch.bool).tril()[-queries:].expand(2, 1, queries, keys).clone()
    mask[1, :, :, : keys - queries + 1] = False
    out = attention(q, k, v, mask)
    torch.testing.assert_close(out.float(), oracle(q, k, v, mask), **TOLERANCE[dtype])


def test_fully_masked_row_gives_zeros_and_large_scores_stay_finite(isa):
    q = torch.randn(1, 2, 2, 16) * 100
    k, v = torch.randn(1, 1, 7, 16) * 100, torch.randn(1, 1, 7, 16)
    mask = torch.ones(1, 1, 2, 7, dtype=torch.bool)
    mask[0, 0, 1] = False
    out = attention(q, k, v, mask)
    assert torch.isfinite(out).all() and (out[:, :, 1] == 0).all()
    torch.testing.assert_close(out, oracle(q, k, v, mask), **TOLERANCE[torch.float32])


def test_many_rows_spread_over_threads_agree_with_the_twin():
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(4, 16, 8, 64, generator=generator).bfloat16()
    k, v = (cache_views(4, 4, 300, 64, torch.bfloat16, generator) for _ in range(2))
    mask = torch.rand(4, 1, 8, 300, generator=generator) > 0.1
    out = attention(q, k, v, mask)
    torch.testing.assert_close(
        out, reference.attention(q, k, v, mask[:, 0], 64**-0.5), **TOLERANCE[torch.bfloat16]
    )


def test_opcheck():
    q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 6)
    mask = torch.rand(1, 2, 5) > 0.2
    torch.library.opcheck(torch.ops.moeweave.attention.default, (q, k, v, mask, 0.5))


def test_torch_compile_fullgraph():
    @torch.compile(fullgraph=True)
    def step(q, k, v, mask):
        return attention(q * 2, k, v, mask)

    q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    mask = torch.ones(1, 1, 1, 6, dtype=torch.bool)
    torch.testing.assert_close(step(q, k, v, mask), oracle(q * 2, k, v, mask), **TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    ("q", "k", "v", "mask", "message"),
    [
        (torch.randn(1, 4, 1, 8), torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8),
         torch.ones(1, 1, 5, dtype=torch.bool), "3 key/value heads do not divide 4"),
        (torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 7), torch.randn(1, 2, 5, 8),
         torch.ones(1, 1, 5, dtype=torch.bool), "k must be"),
        (torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8).double(), torch.randn(1, 2, 5, 8),
         torch.ones(1, 1, 5, dtype=torch.bool), "'k' must have the dtype of 'q'"),
        (torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8),
         torch.ones(1, 1, 4, dtype=torch.bool), "'mask' must be bool"),
        (torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8),
         torch.ones(1, 1, 5), "'mask' must be bool"),
    ],
)  # fmt: skip
def test_bad_input_is_named(q, k, v, mask, message):
    with pytest.raises(ValueError, match=message):
        attention(q, k, v, mask)


def test_native_binding_names_a_bad_cache_view():
    from moeweave import _native
    from moeweave.ops._launch import capsules

    q, out = torch.randn(1, 2, 1, 8), torch.empty(1, 2, 1, 8)
    k = torch.randn(1, 1, 8, 5).transpose(-1, -2)  # [1, 1, 5, 8], last dim strided
    mask = torch.ones(1, 1, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match="attention: 'k' must be contiguous in its last dim"):
        _native.module_for("cpu").attention(*capsules(q, k, k, mask, out), 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_cache_slots_are_never_read(isa, dtype):
    """Masked keys may hold anything (a preallocated, partly written cache): NaN there must not
    reach the output, past the last key a query sees (slots 6-8) nor among them (slot 2)."""
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 2, 16, generator=generator).to(dtype)
    k, v = (torch.randn(1, 2, 9, 16, generator=generator).to(dtype) for _ in range(2))
    mask = torch.ones(1, 1, 2, 9, dtype=torch.bool)
    mask[..., 6:] = False
    mask[..., 2] = False
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, 6:], poisoned_v[:, :, 6:] = float("nan"), float("inf")
    poisoned_k[:, :, 2], poisoned_v[:, :, 2] = float("nan"), float("inf")
    out = attention(q, poisoned_k, poisoned_v, mask)
    torch.testing.assert_close(out.float(), oracle(q, k, v, mask), **TOLERANCE[dtype])


def test_batch_of_problems_of_their_own_shapes_matches_sdpa_per_problem(isa):
    """attention_batch: each problem (its own batch, heads, queries, cache length, dims) against
    the oracle run on that problem alone, in bf16 as the ragged server batch calls it."""
    generator = torch.Generator().manual_seed(5)
    problems = []
    for batch, heads, kv_heads, queries, keys, dk, dv in SHAPES:
        # q sliced out of a larger batch of queries, as the ragged batch slices each sequence's
        queries_of_all = (torch.randn(batch, heads, queries + 3, dk, generator=generator) * 2).bfloat16()
        q = queries_of_all[:, :, 1 : queries + 1]
        k = cache_views(batch, kv_heads, keys, dk, torch.bfloat16, generator)
        v = cache_views(batch, kv_heads, keys, dv, torch.bfloat16, generator)
        problems.append((q, k, v, torch.rand(batch, 1, queries, keys, generator=generator) > 0.3))
    outs = attention_batch(problems, 0.125)
    assert len(outs) == len(problems)
    for out, (q, k, v, mask) in zip(outs, problems, strict=True):
        assert out.shape == (*q.shape[:3], v.shape[-1]) and out.dtype == torch.bfloat16
        torch.testing.assert_close(
            out.float(), oracle(q, k, v, mask, scale=0.125), **TOLERANCE[torch.bfloat16]
        )


def test_batch_with_gradients_takes_the_differentiable_op():
    q = torch.randn(1, 2, 1, 8, requires_grad=True)
    k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    mask = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    (out,) = attention_batch([(q, k, v, mask)], 0.5)
    out.sum().backward()
    expected = q.detach().clone().requires_grad_()
    oracle(expected, k, v, mask, scale=0.5).sum().backward()
    torch.testing.assert_close(q.grad, expected.grad)


def test_batch_names_the_bad_problem():
    good = (
        torch.randn(1, 4, 1, 8),
        torch.randn(1, 2, 5, 8),
        torch.randn(1, 2, 5, 8),
        torch.ones(1, 1, 5, dtype=torch.bool),
    )
    bad = (
        torch.randn(1, 4, 1, 8),
        torch.randn(1, 3, 5, 8),
        torch.randn(1, 3, 5, 8),
        torch.ones(1, 1, 5, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="3 key/value heads do not divide 4"):
        attention_batch([good, bad], 1.0)
