"""The fused MoE expert op against a plain-torch loop over experts (moeweave.ops.reference),
with experts of mixed formats in one table."""

import pytest
import torch
from expert_tables import random_routing, random_table

from moeweave.ops import moe_experts, reference
from moeweave.quant import ExpertTable

TOLERANCE = 0.02  # relative Frobenius: int8 activations at both the gate/up and the down input


def _relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.parametrize("formats", [(4,), (8,), (16,), (2, 3, 4, 8, 16)], ids=str)
@pytest.mark.parametrize(("tokens", "top_k", "num_experts", "hidden", "inter"),
                         [(1, 2, 8, 64, 96), (7, 2, 8, 96, 64), (19, 6, 16, 64, 160), (111, 8, 32, 128, 64)])  # fmt: skip
def test_matches_loop_over_experts(isa, formats, tokens, top_k, num_experts, hidden, inter):
    table = random_table(num_experts, hidden, inter, formats)
    ids, weights = random_routing(tokens, top_k, num_experts)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(2))
    y = moe_experts(x, ids, weights, table)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert _relative(y, reference.moe_experts(x, ids, weights, table)) < TOLERANCE


def test_calls_of_changing_sizes_share_nothing():
    """The op keeps its buffers between calls on a thread and releases them when a call needs far
    less: a long call, short ones, then a long one with other routings must each match the loop."""
    table = random_table(8, 64, 96, (4, 16))
    for seed, tokens in enumerate([300, 1, 7, 300, 2, 150]):
        ids, weights = random_routing(tokens, 2, 8, seed=seed)
        x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(seed))
        assert (
            _relative(moe_experts(x, ids, weights, table), reference.moe_experts(x, ids, weights, table))
            < TOLERANCE
        )


def test_bf16_tokens_and_repeated_expert():
    table = random_table(4, 64, 96, (4,))
    x = torch.randn(5, 64).bfloat16()
    ids = torch.tensor([[0, 0], [1, 2], [3, 3], [2, 1], [0, 3]], dtype=torch.int32)
    weights = torch.rand(5, 2)
    y = moe_experts(x, ids, weights, table)
    assert y.dtype == torch.bfloat16
    assert _relative(y, reference.moe_experts(x, ids, weights, table)) < TOLERANCE


def test_no_tokens():
    table = random_table(4, 64, 96, (4,))
    y = moe_experts(torch.empty(0, 64), torch.empty(0, 2, dtype=torch.int32), torch.empty(0, 2), table)
    assert y.shape == (0, 64)


def test_bad_expert_id_is_named():
    table = random_table(4, 64, 96, (4,))
    ids = torch.tensor([[0, 1], [2, 9]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"'topk_ids' \[1, 1\] = 9 is outside \[0, 4\)"):
        moe_experts(torch.randn(2, 64), ids, torch.rand(2, 2), table)


def test_table_refuses_mismatched_shapes():
    gate, up, down = (
        torch.randn(96, 64).bfloat16(),
        torch.randn(96, 64).bfloat16(),
        torch.randn(64, 95).bfloat16(),
    )
    with pytest.raises(ValueError, match="expert 0 has projection shapes"):
        ExpertTable([(gate, up, down)])


def test_opcheck():
    table = random_table(4, 64, 96, (4, 16))
    ids, weights = random_routing(3, 2, 4)
    torch.library.opcheck(
        torch.ops.moeweave.moe_experts.default, (torch.randn(3, 64), ids, weights, table.table)
    )
