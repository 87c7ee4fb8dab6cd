"""Tiny random checkpoints of every supported architecture, written offline with transformers'
own save_pretrained: the models under test and, loaded back by transformers, the oracle."""

import pytest
import torch
import transformers

COMMON = dict(
    vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
)
MLA = dict(
    num_key_value_heads=4,
    kv_lora_rank=32,
    q_lora_rank=48,
    qk_rope_head_dim=16,
    qk_nope_head_dim=16,
    v_head_dim=16,
)
ARCHITECTURES = {
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                       intermediate_size=96, norm_topk_prob=True, mlp_only_layers=[1])),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=96,
                       shared_expert_intermediate_size=48)),
    "olmoe": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM,
              dict(num_experts=8, num_experts_per_tok=2, intermediate_size=32, clip_qkv=8.0)),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=32)),
    "deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM,
                    dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                         intermediate_size=96, n_shared_experts=1, first_k_dense_replace=1,
                         topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5)),
    "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM,
                    dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                         intermediate_size=96, n_shared_experts=1, first_k_dense_replace=1, n_group=4,
                         topk_group=2, routed_scaling_factor=2.5)),
    # The same with RoPE on half-split instead of interleaved pairs.
    "deepseek_v3_half_split": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM,
                               dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                    intermediate_size=96, n_shared_experts=1, first_k_dense_replace=1, n_group=4,
                                    topk_group=2, routed_scaling_factor=2.5, rope_interleave=False)),
}  # fmt: skip


@pytest.fixture(scope="session", params=sorted(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    """(architecture, path) of a tiny random checkpoint; weights scaled up so routing and
    attention are far from uniform (the defaults make every logit nearly equal)."""
    name = request.param
    config_class, model_class, extra = ARCHITECTURES[name]
    torch.manual_seed(0)
    config = config_class(**{**COMMON, **extra}, eos_token_id=1, bos_token_id=0, pad_token_id=0)
    model = model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.15)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's balancing bias
                buffer.normal_(0, 0.05)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return name, path
