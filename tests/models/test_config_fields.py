"""Every config.json field either runs as transformers runs it, is refused by name, or has no
effect on the forward (docs/models.md lists them). Three kinds of test: the defaults and aliases
moeweave assumes are transformers' own; unsupported and nonsensical values are refused with a
ValueError naming the field; each implemented field's non-default value gives transformers'
logits on a tiny random checkpoint (and, where the weights alone do not show it, transformers'
logits change when the field is reverted, so the test would catch the field being ignored)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from moeweave.models import KVCache, load
from moeweave.models.config_fields import ALIASES, DEFAULT_ROPE_THETA, DEFAULTS
from moeweave.models.spec import PARSERS, spec_from_config

CONFIG_CLASSES = {
    "mixtral": transformers.MixtralConfig,
    "qwen2_moe": transformers.Qwen2MoeConfig,
    "qwen3_moe": transformers.Qwen3MoeConfig,
    "olmoe": transformers.OlmoeConfig,
    "deepseek_v2": transformers.DeepseekV2Config,
    "deepseek_v3": transformers.DeepseekV3Config,
}
TOLERANCE = 1e-5  # max |logit difference| / max |logit|, fp32 experts (as test_parity)
DELETE = object()  # an edit that removes the field from config.json
DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_every_architecture_is_covered():
    assert set(CONFIG_CLASSES) == set(PARSERS) == set(DEFAULTS) == set(ALIASES)


@pytest.mark.parametrize("architecture", sorted(CONFIG_CLASSES))
def test_defaults_are_transformers_class_defaults(architecture):
    """A field config.json omits takes transformers' default, so moeweave's must be the same."""
    config_class = CONFIG_CLASSES[architecture]
    stored = {
        config_class.attribute_map.get(f.name, f.name): f.default for f in dataclasses.fields(config_class)
    }
    assert {name: stored[name] for name in DEFAULTS[architecture]} == DEFAULTS[architecture]
    assert DEFAULT_ROPE_THETA.get(architecture, 10_000.0) == config_class.default_theta


@pytest.mark.parametrize("architecture", sorted(CONFIG_CLASSES))
def test_aliases_are_transformers_attribute_map(architecture):
    assert ALIASES[architecture] == CONFIG_CLASSES[architecture].attribute_map


def test_docs_list_every_field_of_the_config_classes():
    section = DOCS.read_text().split("## Config fields")[1].split("\n## ")[0]
    undocumented = {
        f.name
        for config_class in CONFIG_CLASSES.values()
        for f in dataclasses.fields(config_class)
        if f"`{f.name}`" not in section
    }
    assert not undocumented, f"docs/models.md's config field table lacks {sorted(undocumented)}"


def _edited(config: dict, edits: dict) -> dict:
    for name, value in edits.items():
        if value is DELETE:
            config.pop(name, None)
        else:
            config[name] = value
    return config


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8}

# Values transformers runs (or that configs in the wild carry for DeepSeek's remote code) and
# moeweave does not implement: (architecture, edits to config.json, the field the error names).
REFUSED = [
    ("mixtral", {"hidden_act": "gelu"}, "hidden_act"),
    ("deepseek_v3", {"hidden_act": "relu"}, "hidden_act"),
    ("mixtral", {"sliding_window": 4096}, "sliding_window"),
    ("qwen2_moe", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2, "layer_types": DELETE},
     "use_sliding_window"),
    ("qwen2_moe", {"layer_types": ["full_attention", "sliding_attention", "full_attention"]}, "layer_types"),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 4}, "use_sliding_window"),
    ("olmoe", {"head_dim": 32}, "head_dim"),
    ("deepseek_v2", {"mlp_bias": True}, "mlp_bias"),
    ("deepseek_v2", {"norm_topk_prob": True}, "norm_topk_prob"),
    ("deepseek_v2", {"topk_method": "noaux_tc"}, "topk_method"),
    ("deepseek_v2", {"scoring_func": "sigmoid"}, "scoring_func"),
    ("deepseek_v3", {"scoring_func": "softmax"}, "scoring_func"),
    ("deepseek_v3", {"topk_method": "group_limited_greedy"}, "topk_method"),
    ("deepseek_v2", {"moe_layer_freq": 2}, "moe_layer_freq"),
    ("deepseek_v3", {"num_key_value_heads": 2}, "num_key_value_heads"),
    ("deepseek_v3", {"quantization_config": {"quant_method": "fp8"}}, "quantization_config"),
    ("qwen3_moe", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, r"rope_parameters\.rope_type"),
    ("mixtral", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, r"rope_parameters\.rope_type"),
    ("olmoe", {"rope_parameters": {"rope_type": "longrope", "factor": 2.0}}, r"rope_parameters\.rope_type"),
    ("qwen2_moe", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_scaling\.rope_type"),
    ("olmoe", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ("qwen3_moe", {"rope_parameters": {**YARN, "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ("qwen3_moe", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "mscale": 1.0}},
     r"rope_parameters\.mscale"),
    ("deepseek_v3", {"rope_parameters": {**YARN, "low_freq_factor": 1.0}}, r"rope_parameters\.low_freq_factor"),
    ("qwen2_moe", {"rope_parameters": {"rope_type": "default", "factor": 2.0}}, r"rope_parameters\.factor"),
]  # fmt: skip

# Values that make no sense: (architecture, edits, the field the error names).
NONSENSE = [
    ("qwen3_moe", {"num_experts_per_tok": 0}, "num_experts_per_tok"),
    ("qwen3_moe", {"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ("mixtral", {"num_local_experts": 0}, "num_local_experts"),
    ("mixtral", {"hidden_size": 0}, "hidden_size"),
    ("olmoe", {"hidden_size": -64}, "hidden_size"),
    ("qwen2_moe", {"hidden_size": "64"}, "hidden_size"),
    ("qwen2_moe", {"hidden_size": 64.0}, "hidden_size"),
    ("qwen2_moe", {"num_hidden_layers": True}, "num_hidden_layers"),
    ("mixtral", {"num_hidden_layers": 0}, "num_hidden_layers"),
    ("mixtral", {"num_attention_heads": 0}, "num_attention_heads"),
    ("deepseek_v2", {"num_attention_heads": -4}, "num_attention_heads"),
    ("olmoe", {"vocab_size": 0}, "vocab_size"),
    ("mixtral", {"intermediate_size": 0}, "intermediate_size"),
    ("qwen3_moe", {"moe_intermediate_size": -1}, "moe_intermediate_size"),
    ("deepseek_v3", {"moe_intermediate_size": 0}, "moe_intermediate_size"),
    ("qwen2_moe", {"shared_expert_intermediate_size": 0}, "shared_expert_intermediate_size"),
    ("deepseek_v3", {"n_shared_experts": 0}, "n_shared_experts"),
    ("mixtral", {"hidden_size": 66}, "hidden_size"),  # head_dim derived: 66 / 4 heads
    ("qwen2_moe", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("mixtral", {"num_key_value_heads": 0}, "num_key_value_heads"),
    ("qwen3_moe", {"head_dim": 15}, "head_dim"),
    ("qwen3_moe", {"head_dim": 16.0}, "head_dim"),
    ("deepseek_v3", {"n_group": 3}, "n_group"),
    ("deepseek_v3", {"n_group": 8}, "n_group"),  # one expert per group; groups are scored by their best two
    ("deepseek_v3", {"topk_group": 5}, "topk_group"),
    ("deepseek_v3", {"num_experts_per_tok": 5}, "num_experts_per_tok"),  # 2 groups x 2 experts reachable
    ("deepseek_v3", {"n_group": None}, "n_group"),
    ("deepseek_v2", {"n_group": 3}, "n_group"),
    ("deepseek_v2", {"topk_group": 0}, "topk_group"),
    ("mixtral", {"rms_norm_eps": 0}, "rms_norm_eps"),
    ("deepseek_v2", {"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    ("olmoe", {"rms_norm_eps": "1e-5"}, "rms_norm_eps"),
    ("qwen3_moe", {"decoder_sparse_step": 0}, "decoder_sparse_step"),
    ("qwen3_moe", {"mlp_only_layers": [3]}, "mlp_only_layers"),
    ("qwen2_moe", {"mlp_only_layers": "1"}, "mlp_only_layers"),
    ("deepseek_v3", {"first_k_dense_replace": -1}, "first_k_dense_replace"),
    ("deepseek_v3", {"first_k_dense_replace": 4}, "first_k_dense_replace"),
    ("deepseek_v2", {"routed_scaling_factor": 0}, "routed_scaling_factor"),
    ("deepseek_v2", {"kv_lora_rank": 0}, "kv_lora_rank"),
    ("deepseek_v3", {"q_lora_rank": 0}, "q_lora_rank"),
    ("deepseek_v3", {"qk_rope_head_dim": 15}, "qk_rope_head_dim"),
    ("deepseek_v2", {"v_head_dim": "16"}, "v_head_dim"),
    ("olmoe", {"clip_qkv": 0}, "clip_qkv"),
    ("olmoe", {"clip_qkv": -8.0}, "clip_qkv"),
    ("qwen3_moe", {"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ("qwen3_moe", {"norm_topk_prob": 1}, "norm_topk_prob"),
    ("deepseek_v3", {"rope_interleave": "true"}, "rope_interleave"),
    ("mixtral", {"eos_token_id": "</s>"}, "eos_token_id"),
    ("mixtral", {"num_experts": 4}, "num_experts"),  # an alias of num_local_experts with another value
    ("qwen3_moe", {"rope_parameters": {"rope_type": "default", "rope_theta": 0}}, r"rope_parameters\.rope_theta"),
    ("qwen2_moe", {"rope_parameters": None, "rope_theta": -1.0}, "rope_theta"),
    ("qwen3_moe", {"rope_parameters": {"rope_type": "linear", "factor": 0.5}}, r"rope_parameters\.factor"),
    ("qwen3_moe", {"rope_parameters": {"rope_type": "yarn"}}, r"rope_parameters\.factor"),
    ("qwen3_moe", {"rope_parameters": {**YARN, "beta_fast": "fast"}}, r"rope_parameters\.beta_fast"),
    ("qwen3_moe", {"rope_parameters": {**YARN, "original_max_position_embeddings": 0}},
     r"rope_parameters\.original_max_position_embeddings"),
    ("qwen3_moe", {"rope_parameters": [10000.0]}, "rope_parameters"),
    ("mixtral", {"hidden_size": DELETE}, "hidden_size"),
    ("qwen2_moe", {"num_experts": DELETE}, "num_experts"),
    ("deepseek_v2", {"num_experts_per_tok": DELETE}, "num_experts_per_tok"),
    ("deepseek_v3", {"kv_lora_rank": DELETE}, "kv_lora_rank"),
]  # fmt: skip


def _case_id(case) -> str:
    architecture, edits, _ = case
    return f"{architecture}-" + "-".join(
        f"{name}={'deleted' if v is DELETE else v}" for name, v in edits.items()
    )


@pytest.mark.parametrize(
    "architecture, edits, field", REFUSED + NONSENSE, ids=map(_case_id, REFUSED + NONSENSE)
)
def test_bad_value_is_refused_naming_the_field(tiny_config, architecture, edits, field):
    config = _edited(tiny_config(architecture), edits)
    with pytest.raises(ValueError, match=rf"config\.json: (.* )?{field}\b") as error:
        spec_from_config(config)
    assert type(error.value) is ValueError  # not a KeyError / ZeroDivisionError wrapped up later


@pytest.mark.parametrize("architecture", sorted(CONFIG_CLASSES))
def test_fixture_configs_are_accepted(tiny_config, architecture):
    spec_from_config(tiny_config(architecture))


def test_refusal_happens_at_load(checkpoint, tmp_path):
    _, path = checkpoint
    target = tmp_path / "copy"
    shutil.copytree(path, target)
    config = json.loads((target / "config.json").read_text())
    config["hidden_act"] = "gelu_pytorch_tanh"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_act='gelu_pytorch_tanh' is not supported"):
        load(target)


def _padded_batch(vocab: int):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (3, 9), generator=generator)
    mask = torch.ones(3, 9, dtype=torch.int64)
    mask[1, :5], mask[2, :8] = 0, 0  # left padding: lengths 9, 4, 1
    return ids * mask, mask


def _transformers_logits(path, ids, mask):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _assert_matches_transformers(path, reverted=None):
    """moeweave (fp32 experts) against transformers on a padded batch; with `reverted` (a
    config.json dict), also that transformers' logits move when the field goes back to it."""
    ids, mask = _padded_batch(json.loads((path / "config.json").read_text())["vocab_size"])
    expected = _transformers_logits(path, ids, mask)
    got = load(path, experts="fp32")(ids, attention_mask=mask).logits
    real = mask.bool()
    scale = expected[real].abs().max()
    error = (got - expected).abs().amax(-1)[real] / scale  # per real position
    assert error.max() < TOLERANCE, f"relative max error {error.max():.2e}"
    if reverted is not None:
        (path / "config.json").write_text(json.dumps(reverted))
        baseline = _transformers_logits(path, ids, mask)
        change = (baseline - expected).abs().amax(-1)[real].max() / scale
        assert change > 100 * TOLERANCE, f"the field barely changes transformers' logits ({change:.1e})"


V2_LITE_YARN = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}  # fmt: skip
V3_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
           "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8}  # fmt: skip


def _legacy_rope(rope_scaling: dict | None, theta: float):
    """config.json as transformers 4.x wrote it: rope_theta and rope_scaling at the top level."""

    def edit(config):
        config.pop("rope_parameters")
        config.update(rope_theta=theta, rope_scaling=rope_scaling)

    return edit


def _drop_original_max_position(config):
    config["rope_parameters"].pop("original_max_position_embeddings")


ROPE = ("rope_parameters", "rope_theta", "rope_scaling")

# (architecture, config overrides, edit of the written config.json, the fields whose reverting
# must move transformers' logits — none where the field changes which tensors exist, or where
# the value computes the same function, as swish).
IMPLEMENTED = {
    "head_dim-qwen3_moe": ("qwen3_moe", dict(head_dim=32), None, ()),
    "head_dim-qwen2_moe": ("qwen2_moe", dict(head_dim=32), None, ()),
    "head_dim-mixtral": ("mixtral", dict(head_dim=32), None, ()),
    "qkv_bias-off-qwen2_moe": ("qwen2_moe", dict(qkv_bias=False), None, ()),
    "attention_bias-qwen3_moe": ("qwen3_moe", dict(attention_bias=True), None, ()),
    "attention_bias-olmoe": ("olmoe", dict(attention_bias=True), None, ()),
    "attention_bias-deepseek_v2-no-q-lora": ("deepseek_v2", dict(attention_bias=True, q_lora_rank=None), None, ()),
    "attention_bias-deepseek_v3": ("deepseek_v3", dict(attention_bias=True), None, ()),
    "q_lora_rank-none-deepseek_v3": ("deepseek_v3", dict(q_lora_rank=None), None, ()),
    "decoder_sparse_step-qwen2_moe": ("qwen2_moe", dict(decoder_sparse_step=2), None, ()),
    "sliding-window-on-no-window-layers-qwen2_moe": (
        "qwen2_moe", dict(use_sliding_window=True, sliding_window=4, max_window_layers=0), None, ()),
    "norm_topk_prob-qwen2_moe": ("qwen2_moe", dict(norm_topk_prob=True), None, ("norm_topk_prob",)),
    "norm_topk_prob-olmoe": ("olmoe", dict(norm_topk_prob=True), None, ("norm_topk_prob",)),
    "norm_topk_prob-off-deepseek_v3": ("deepseek_v3", dict(norm_topk_prob=False), None, ("norm_topk_prob",)),
    "topk_method-greedy-deepseek_v2": ("deepseek_v2", dict(topk_method="greedy"), None, ("topk_method",)),
    "tie_word_embeddings-qwen3_moe": ("qwen3_moe", dict(tie_word_embeddings=True), None, ()),
    "tie_word_embeddings-deepseek_v2": ("deepseek_v2", dict(tie_word_embeddings=True), None, ()),
    "hidden_act-swish-qwen2_moe": ("qwen2_moe", dict(hidden_act="swish"), None, ()),
    "rms_norm_eps-qwen3_moe": ("qwen3_moe", dict(rms_norm_eps=0.1), None, ("rms_norm_eps",)),
    "rms_norm_eps-deepseek_v3": ("deepseek_v3", dict(rms_norm_eps=0.1), None, ("rms_norm_eps",)),
    "rope_theta-legacy-qwen2_moe": ("qwen2_moe", {}, _legacy_rope(None, 100.0), ROPE),
    "rope-linear-mixtral": ("mixtral", dict(rope_parameters={"rope_type": "linear", "factor": 4.0}), None, ROPE),
    "rope-linear-legacy-olmoe": ("olmoe", {}, _legacy_rope({"type": "linear", "factor": 3.0}, 10000.0), ROPE),
    "rope-yarn-qwen3_moe": ("qwen3_moe", dict(rope_parameters=YARN), None, ROPE),
    "rope-yarn-all-parameters-qwen3_moe": ("qwen3_moe", dict(rope_parameters={
        **YARN, "factor": 8.0, "beta_fast": 8, "beta_slow": 2, "attention_factor": 0.9, "truncate": False}), None, ROPE),
    "rope-yarn-max_position_embeddings-qwen3_moe": (
        "qwen3_moe", dict(rope_parameters=YARN, max_position_embeddings=8), _drop_original_max_position, ROPE),
    "rope-yarn-deepseek_v2-lite": ("deepseek_v2", dict(max_position_embeddings=163840),
                                   _legacy_rope(V2_LITE_YARN, 10000.0), ROPE),
    "rope-yarn-deepseek_v3": ("deepseek_v3", dict(rope_parameters=V3_YARN, max_position_embeddings=163840), None, ROPE),
    "rope-yarn-deepseek_v3-half-split": ("deepseek_v3_half_split", dict(rope_parameters=V3_YARN), None, ROPE),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(IMPLEMENTED))
def test_implemented_field_matches_transformers(tiny_checkpoint, tiny_config, case):
    architecture, overrides, edit, effect_of = IMPLEMENTED[case]
    path = tiny_checkpoint(architecture, edit=edit, **overrides)
    reverted = None
    if effect_of:
        base = tiny_config(architecture)
        reverted = json.loads((path / "config.json").read_text())
        for name in effect_of:
            reverted.pop(name, None)
            if name in base:
                reverted[name] = base[name]
    _assert_matches_transformers(path, reverted)


@pytest.mark.parametrize("case", ["rope-yarn-deepseek_v2-lite", "rope-yarn-qwen3_moe"])
def test_scaled_rope_decodes_like_transformers(tiny_checkpoint, case):
    """Decode steps (moeweave's attention op over the cache) use the scaled cos/sin rows and
    MLA's scaled softmax too: prefill then one token at a time against transformers' forward."""
    architecture, overrides, edit, _ = IMPLEMENTED[case]
    path = tiny_checkpoint(architecture, edit=edit, **overrides)
    ids = torch.randint(2, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    expected = _transformers_logits(path, ids, torch.ones_like(ids))
    model, cache = load(path, experts="fp32"), KVCache()
    pieces = [model(ids[:, :5], cache=cache).logits]
    pieces += [model(ids[:, t : t + 1], cache=cache).logits for t in range(5, 12)]
    error = (torch.cat(pieces, dim=1) - expected).abs().max() / expected.abs().max()
    assert error < 1e-4, f"relative max error {error:.2e}"


# config.json with only the fields moeweave requires (plus what transformers' defaults would make
# inconsistent at this size): every other field takes transformers' default on both sides.
_SIZES = dict(
    vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_experts_per_tok=2
)
_MLA = dict(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16, intermediate_size=96,
            moe_intermediate_size=32)  # fmt: skip
MINIMAL = {
    "mixtral": dict(_SIZES, num_attention_heads=8, intermediate_size=32, num_local_experts=4),  # 8 kv heads
    "qwen2_moe": dict(
        _SIZES, num_attention_heads=16, intermediate_size=96, moe_intermediate_size=32, num_experts=4
    ),
    "qwen3_moe": dict(_SIZES, intermediate_size=96, moe_intermediate_size=32, num_experts=4),
    "olmoe": dict(_SIZES, intermediate_size=32, num_experts=4),
    "deepseek_v2": dict(_SIZES, **_MLA, n_routed_experts=4),
    # 8 groups of 2 experts and 3 dense layers by default; 128 kv heads would not match 4 heads.
    "deepseek_v3": dict(_SIZES, **_MLA, num_hidden_layers=4, n_routed_experts=16, num_key_value_heads=4),
}


@pytest.mark.parametrize("architecture", sorted(MINIMAL))
def test_omitted_fields_take_transformers_defaults(tiny_checkpoint, architecture):
    _assert_matches_transformers(tiny_checkpoint(architecture, config=MINIMAL[architecture]))


def _add_mtp_layer(path):
    """A multi-token-prediction layer after the decoder layers, as DeepSeek-V3 checkpoints ship."""
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.3.eh_proj.weight"] = torch.randn(64, 128)
    tensors["model.layers.3.enorm.weight"] = torch.ones(64)
    save_file(tensors, path / "model.safetensors")


def test_mtp_layers_are_skipped_like_transformers(tiny_checkpoint):
    path = tiny_checkpoint("deepseek_v3", num_nextn_predict_layers=1)
    _add_mtp_layer(path)
    _assert_matches_transformers(path)


def test_tensors_past_the_mtp_layers_are_still_reported(tiny_checkpoint):
    path = tiny_checkpoint("deepseek_v3", num_nextn_predict_layers=0)
    _add_mtp_layer(path)
    with pytest.raises(ValueError, match=r"does not use: model\.layers\.3\.eh_proj\.weight"):
        load(path)
