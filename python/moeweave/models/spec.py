"""One normalised description of every supported MoE architecture, read from a Hugging Face
config.json. The model code reads only this, so an architecture is a parser plus, where its
layers differ, a flag here — not a new model class.

Dimension legend: H hidden size, I expert intermediate size, E routed experts, K experts per
token, nH / nKV attention / key-value heads, D head dim, V vocabulary.
"""

from dataclasses import dataclass, field


@dataclass
class ModelSpec:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    # Attention variants.
    qkv_bias: bool = False
    qk_norm: str | None = None  # "head": RMSNorm per head (Qwen3); "full": over all heads (OLMoE)
    clip_qkv: float | None = None
    # MoE.
    num_experts: int = 0
    top_k: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    dense_intermediate_size: int = 0  # for dense (non-MoE) layers
    moe_layers: list[bool] = field(default_factory=list)
    shared_expert_intermediate_size: int = 0
    shared_expert_gated: bool = False  # Qwen2-MoE: sigmoid(gate(x)) * shared(x)
    shared_expert_name: str = "shared_expert"
    # Routers: "softmax" (softmax, top-k, optional renormalisation), "deepseek_v2" (softmax,
    # greedy or group-limited top-k, scaled), "deepseek_v3" (sigmoid + correction bias chooses,
    # group-limited, unbiased weights renormalised and scaled).
    router: str = "softmax"
    topk_method: str = "greedy"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    # Multi-head latent attention (DeepSeek); attention = "gqa" otherwise.
    attention: str = "gqa"
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = False
    # Checkpoint naming of a layer's MoE block.
    moe_prefix: str = "mlp"
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    @property
    def rope_dim(self) -> int:
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise ValueError(
            f"unsupported RoPE scaling {params or config.get('rope_scaling')}: only default RoPE is implemented"
        )
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _base(config: dict, architecture: str) -> dict:
    heads = config["num_attention_heads"]
    return dict(
        architecture=architecture,
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(config),
        tie_word_embeddings=config.get("tie_word_embeddings", False),
    )


def _num_experts(config: dict) -> int:
    """transformers writes num_experts or num_local_experts depending on version and model."""
    return config["num_experts"] if "num_experts" in config else config["num_local_experts"]


def _sparse_layers(config: dict) -> list[bool]:
    """Qwen-style placement: MoE where (layer + 1) % decoder_sparse_step == 0, minus mlp_only_layers."""
    step, dense = config.get("decoder_sparse_step", 1) or 1, set(config.get("mlp_only_layers") or [])
    return [(layer + 1) % step == 0 and layer not in dense for layer in range(config["num_hidden_layers"])]


def _qwen3_moe(config: dict) -> ModelSpec:
    return ModelSpec(
        **_base(config, "qwen3_moe"),
        qkv_bias=config.get("attention_bias", False),
        qk_norm="head",
        num_experts=_num_experts(config),
        top_k=config["num_experts_per_tok"],
        moe_intermediate_size=config["moe_intermediate_size"],
        norm_topk_prob=config.get("norm_topk_prob", False),
        dense_intermediate_size=config["intermediate_size"],
        moe_layers=_sparse_layers(config),
    )


def _qwen2_moe(config: dict) -> ModelSpec:
    return ModelSpec(
        **_base(config, "qwen2_moe"),
        qkv_bias=config.get("qkv_bias", True),
        num_experts=_num_experts(config),
        top_k=config["num_experts_per_tok"],
        moe_intermediate_size=config["moe_intermediate_size"],
        norm_topk_prob=config.get("norm_topk_prob", False),
        dense_intermediate_size=config["intermediate_size"],
        moe_layers=_sparse_layers(config),
        shared_expert_intermediate_size=config.get("shared_expert_intermediate_size", 0),
        shared_expert_gated=True,
    )


def _olmoe(config: dict) -> ModelSpec:
    return ModelSpec(
        **_base(config, "olmoe"),
        qkv_bias=config.get("attention_bias", False),
        qk_norm="full",
        clip_qkv=config.get("clip_qkv"),
        num_experts=_num_experts(config),
        top_k=config["num_experts_per_tok"],
        moe_intermediate_size=config["intermediate_size"],
        norm_topk_prob=config.get("norm_topk_prob", False),
        moe_layers=[True] * config["num_hidden_layers"],
    )


def _mixtral(config: dict) -> ModelSpec:
    return ModelSpec(
        **_base(config, "mixtral"),
        num_experts=_num_experts(config),
        top_k=config["num_experts_per_tok"],
        moe_intermediate_size=config["intermediate_size"],
        norm_topk_prob=True,
        moe_layers=[True] * config["num_hidden_layers"],
        moe_prefix="block_sparse_moe",
        expert_names=("w1", "w3", "w2"),
    )


def _deepseek(config: dict, version: int) -> ModelSpec:
    first_dense = config.get("first_k_dense_replace", 0)
    return ModelSpec(
        **_base(config, f"deepseek_v{version}"),
        num_experts=config["n_routed_experts"],
        top_k=config["num_experts_per_tok"],
        moe_intermediate_size=config["moe_intermediate_size"],
        # transformers' DeepSeek-V2 router never renormalises; V3's follows norm_topk_prob.
        norm_topk_prob=version == 3 and config.get("norm_topk_prob", True),
        dense_intermediate_size=config["intermediate_size"],
        moe_layers=[layer >= first_dense for layer in range(config["num_hidden_layers"])],
        shared_expert_intermediate_size=config["moe_intermediate_size"]
        * (config.get("n_shared_experts") or 0),
        shared_expert_name="shared_experts",
        router=f"deepseek_v{version}",
        topk_method=config.get("topk_method", "greedy") if version == 2 else "group_limited_greedy",
        n_group=config.get("n_group") or 1,
        topk_group=config.get("topk_group") or 1,
        routed_scaling_factor=config.get("routed_scaling_factor", 1.0),
        attention="mla",
        qkv_bias=config.get("attention_bias", False),
        q_lora_rank=config.get("q_lora_rank"),
        kv_lora_rank=config["kv_lora_rank"],
        qk_nope_head_dim=config["qk_nope_head_dim"],
        qk_rope_head_dim=config["qk_rope_head_dim"],
        v_head_dim=config["v_head_dim"],
        rope_interleave=version == 2 or config.get("rope_interleave", True),
    )


PARSERS = {
    "qwen3_moe": _qwen3_moe,
    "qwen2_moe": _qwen2_moe,
    "olmoe": _olmoe,
    "mixtral": _mixtral,
    "deepseek_v2": lambda config: _deepseek(config, 2),
    "deepseek_v3": lambda config: _deepseek(config, 3),
}


def spec_from_config(config: dict) -> ModelSpec:
    model_type = config.get("model_type")
    if model_type not in PARSERS:
        raise ValueError(
            f"unsupported architecture {model_type!r}: moeweave runs {', '.join(sorted(PARSERS))}"
        )
    return PARSERS[model_type](config)
