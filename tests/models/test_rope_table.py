"""RopeTable against transformers' own rotary embedding, across the table's growth."""

import torch
import transformers
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRotaryEmbedding

from moeweave.models.layers import RopeTable


def test_rows_match_transformers_across_growth():
    config = transformers.Qwen3MoeConfig(head_dim=32, rope_theta=1_000_000.0)
    reference = Qwen3MoeRotaryEmbedding(config)
    table = RopeTable(32, 1_000_000.0, torch.float32)
    # 250 then 10 positions: the second call crosses the first allocation (256 rows) and regrows.
    for start, count in ((0, 250), (250, 10), (3, 1), (900, 5)):
        cos, sin = table(start, count)
        positions = torch.arange(start, start + count)[None]
        expected_cos, expected_sin = reference(torch.empty(1, dtype=torch.float32), positions)
        torch.testing.assert_close(cos, expected_cos[0])
        torch.testing.assert_close(sin, expected_sin[0])
