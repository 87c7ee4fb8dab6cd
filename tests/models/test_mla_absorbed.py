"""MLA over its cache: decode steps attend over the cached latents with kv_b folded into the
query and the output, prompts expand the latents per head. The oracle for both: keys and values
from the checkpoint's own kv_b_proj, plain torch softmax."""

import pytest
import torch
from safetensors.torch import load_file

from moeweave.models import load
from moeweave.models.mla import ABSORB_QUERIES, mla_cached_core
from moeweave.models.rope import mla_softmax_scale


@pytest.mark.parametrize("architecture", ["deepseek_v2", "deepseek_v3"])
@pytest.mark.parametrize("queries", [1, 3, ABSORB_QUERIES, ABSORB_QUERIES + 1])
def test_attention_over_cached_latents_matches_kv_b_expanded(tiny_checkpoint, architecture, queries):
    path = tiny_checkpoint(architecture)
    kv_b = load_file(path / "model.safetensors")["model.layers.0.self_attn.kv_b_proj.weight"].float()
    model = load(path, experts="fp32", projections="float")
    spec, w = model.spec, model.layers[0].attention
    heads, nope, rope, v_dim = spec.num_heads, spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
    generator = torch.Generator().manual_seed(queries)
    total = 11
    query = torch.randn(2, heads, queries, nope + rope, generator=generator)
    keys = torch.randn(2, 1, total, spec.kv_lora_rank + rope, generator=generator)
    mask = torch.rand(2, 1, queries, total, generator=generator) > 0.3
    mask[..., -1] = True  # every query sees at least itself

    latent, k_rot = keys.split([spec.kv_lora_rank, rope], dim=-1)
    kv = (latent @ kv_b.T).view(2, 1, total, heads, nope + v_dim)[:, 0].transpose(1, 2)  # [B, nH, T, N + Dv]
    k = torch.cat([kv[..., :nope], k_rot.expand(-1, heads, -1, -1)], dim=-1)
    scores = (query @ k.transpose(-1, -2)) * mla_softmax_scale(nope + rope, spec.rope_scaling)
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ kv[..., nope:]  # [B, nH, S, Dv]
    expected = expected.transpose(1, 2).reshape(2, queries, heads * v_dim)

    got = mla_cached_core(spec, w, query, keys, mask)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
