"""Tiny Hugging Face MoE checkpoints, built offline from transformers configs with random weights
and saved with save_pretrained: the on-disk layouts the store must understand, written by the
library that defines them. Built once per session."""

import json

import pytest
import torch
import transformers

from moeweave.quant import QuantizedWeight
from moeweave.store.manifest import UNSIGNED, sign

COMMON = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=128,
    max_position_embeddings=64,
)  # fmt: skip
DEEPSEEK = dict(
    intermediate_size=96, moe_intermediate_size=48, n_routed_experts=4, num_experts_per_tok=2,
    n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16,
    v_head_dim=16,
)  # fmt: skip
# model_type -> (config class, its MoE sizes). I = 48 is not a multiple of the group size (64),
# so padding is exercised; hidden 64 is.
ARCHITECTURES = {
    "mixtral": (transformers.MixtralConfig, dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (
        transformers.Qwen2MoeConfig,
        dict(moe_intermediate_size=48, intermediate_size=96, shared_expert_intermediate_size=96, num_experts=4,
             num_experts_per_tok=2),
    ),
    "qwen3_moe": (
        transformers.Qwen3MoeConfig,
        dict(moe_intermediate_size=48, intermediate_size=96, num_experts=4, num_experts_per_tok=2, head_dim=32),
    ),
    "olmoe": (transformers.OlmoeConfig, dict(intermediate_size=48, num_experts=4, num_experts_per_tok=2, eos_token_id=1)),
    "deepseek_v2": (transformers.DeepseekV2Config, dict(DEEPSEEK, q_lora_rank=None)),
    "deepseek_v3": (transformers.DeepseekV3Config, dict(DEEPSEEK, q_lora_rank=32, n_group=1, topk_group=1)),
    "gpt_oss": (
        transformers.GptOssConfig,
        dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, head_dim=32,
             layer_types=["full_attention"] * 2),
    ),
}  # fmt: skip


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """hf_checkpoint(model_type) -> a directory holding that architecture's saved checkpoint."""
    built = {}

    def build(model_type: str):
        if model_type not in built:
            config_class, sizes = ARCHITECTURES[model_type]
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config_class(**COMMON, **sizes))
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name.endswith("_bias"):  # GPT-OSS initialises expert biases to zero
                        parameter.normal_()
            directory = tmp_path_factory.mktemp(model_type)
            model.save_pretrained(directory)
            built[model_type] = directory
        return built[model_type]

    return build


@pytest.fixture
def same_quantized():
    """same_quantized(got, want, where): asserts two QuantizedWeights are bit-identical."""

    def assert_same_quantized(got: QuantizedWeight, want: QuantizedWeight, where: str) -> None:
        assert (got.n, got.k, got.bits, got.group_size) == (want.n, want.k, want.bits, want.group_size), where
        assert torch.equal(got.packed, want.packed), where
        assert got.scales.dtype == want.scales.dtype and torch.equal(got.scales, want.scales), where
        assert (got.zeros is None) == (want.zeros is None), where
        if want.zeros is not None:
            assert torch.equal(got.zeros, want.zeros), where

    return assert_same_quantized


@pytest.fixture
def edit_manifest():
    """edit_manifest(store_dir, change, resign=True): edits a store's manifest.json in place."""

    def edit(store_dir, change, resign=True):
        """Applies change(manifest dict) to the store's manifest. resign: recompute the checksum, as a
        writer of such a manifest would (the test is about the edit); else the old one stays (the
        test is about the checksum)."""
        path = store_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        if resign:
            manifest["checksum"] = UNSIGNED
            path.write_text(sign(json.dumps(manifest)))
        else:
            path.write_text(json.dumps(manifest))

    return edit


@pytest.fixture
def needs_uring(uring_works) -> None:
    if not uring_works:
        pytest.skip("io_uring is refused here already")
