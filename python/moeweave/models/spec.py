"""One normalised description of every supported MoE architecture, read from a Hugging Face
config.json. The model code reads only this, so an architecture is a parser plus, where its
layers differ, a flag here — not a new model class. Parsers read fields through
config_fields.Fields, after config_fields.validate has checked and refused what needs it.

Dimension legend: H hidden size, I expert intermediate size, E routed experts, K experts per
token, nH / nKV attention / key-value heads, D head dim, V vocabulary.
"""

from dataclasses import dataclass, field

from moeweave.models.config_fields import Fields, rope, validate
from moeweave.models.rope import NO_SCALING, RopeScaling


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
    rope_scaling: RopeScaling = NO_SCALING
    # Attention variants. MLA's qkv_bias covers q_a_proj and kv_a_proj_with_mqa.
    qkv_bias: bool = False
    o_bias: bool = False
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
    # DeepSeek-V3's multi-token-prediction layers, stored after the decoder layers; not part of
    # the forward (transformers skips them too), so loading leaves their tensors unread.
    mtp_layers: int = 0

    @property
    def rope_dim(self) -> int:
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim


def _common(f: Fields) -> dict:
    theta, scaling = rope(f)
    return dict(
        architecture=f.architecture,
        vocab_size=f.size("vocab_size"),
        hidden_size=f.size("hidden_size"),
        num_layers=f.size("num_hidden_layers"),
        num_heads=f.size("num_attention_heads"),
        rms_norm_eps=f.number("rms_norm_eps"),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=f.flag("tie_word_embeddings"),
    )


def _gqa(f: Fields) -> dict:
    return dict(_common(f), num_kv_heads=f.kv_heads(), head_dim=f.head_dim())


def _qwen_moe_layers(f: Fields) -> dict:
    """Qwen2/3-MoE's experts and the placement of their sparse and dense layers."""
    return dict(
        num_experts=f.num_experts(),
        top_k=f.size("num_experts_per_tok"),
        moe_intermediate_size=f.size("moe_intermediate_size"),
        norm_topk_prob=f.flag("norm_topk_prob"),
        dense_intermediate_size=f.size("intermediate_size"),
        moe_layers=f.sparse_layers(),
    )


def _qwen3_moe(f: Fields) -> ModelSpec:
    bias = f.flag("attention_bias")
    return ModelSpec(**_gqa(f), qkv_bias=bias, o_bias=bias, qk_norm="head", **_qwen_moe_layers(f))


def _qwen2_moe(f: Fields) -> ModelSpec:
    return ModelSpec(
        **_gqa(f),
        qkv_bias=f.flag("qkv_bias"),
        **_qwen_moe_layers(f),
        shared_expert_intermediate_size=f.size("shared_expert_intermediate_size"),
        shared_expert_gated=True,
    )


def _olmoe(f: Fields) -> ModelSpec:
    bias = f.flag("attention_bias")
    return ModelSpec(
        **_gqa(f),
        qkv_bias=bias,
        o_bias=bias,
        qk_norm="full",
        clip_qkv=f.optional_number("clip_qkv"),
        num_experts=f.num_experts(),
        top_k=f.size("num_experts_per_tok"),
        moe_intermediate_size=f.size("intermediate_size"),
        norm_topk_prob=f.flag("norm_topk_prob"),
        moe_layers=[True] * f.size("num_hidden_layers"),
    )


def _mixtral(f: Fields) -> ModelSpec:
    return ModelSpec(
        **_gqa(f),
        num_experts=f.num_experts(),
        top_k=f.size("num_experts_per_tok"),
        moe_intermediate_size=f.size("intermediate_size"),
        norm_topk_prob=True,
        moe_layers=[True] * f.size("num_hidden_layers"),
    )


def _deepseek(f: Fields) -> ModelSpec:
    v3 = f.architecture == "deepseek_v3"
    first_dense = f.size("first_k_dense_replace", minimum=0)
    bias = f.flag("attention_bias")
    grouped = v3 or f.raw("topk_method") == "group_limited_greedy"
    return ModelSpec(
        **_common(f),
        num_kv_heads=f.size("num_attention_heads"),
        head_dim=f.size("qk_rope_head_dim"),
        num_experts=f.num_experts(),
        top_k=f.size("num_experts_per_tok"),
        moe_intermediate_size=f.size("moe_intermediate_size"),
        # transformers' DeepSeek-V2 router never renormalises (validate refuses norm_topk_prob).
        norm_topk_prob=v3 and f.flag("norm_topk_prob"),
        dense_intermediate_size=f.size("intermediate_size"),
        moe_layers=[layer >= first_dense for layer in range(f.size("num_hidden_layers"))],
        shared_expert_intermediate_size=f.size("moe_intermediate_size") * f.size("n_shared_experts"),
        shared_expert_name="shared_experts",
        router=f.architecture,
        topk_method="group_limited_greedy" if v3 else f.raw("topk_method"),
        n_group=f.size("n_group") if grouped else 1,
        topk_group=f.size("topk_group") if grouped else 1,
        routed_scaling_factor=f.number("routed_scaling_factor"),
        attention="mla",
        qkv_bias=bias,
        o_bias=bias,
        q_lora_rank=f.optional_size("q_lora_rank"),
        kv_lora_rank=f.size("kv_lora_rank"),
        qk_nope_head_dim=f.size("qk_nope_head_dim"),
        qk_rope_head_dim=f.size("qk_rope_head_dim"),
        v_head_dim=f.size("v_head_dim"),
        # transformers' DeepSeek-V2 always rotates interleaved pairs; V3 follows rope_interleave.
        rope_interleave=not v3 or f.flag("rope_interleave"),
        mtp_layers=f.size("num_nextn_predict_layers", minimum=0) if v3 else 0,
    )


PARSERS = {
    "qwen3_moe": _qwen3_moe,
    "qwen2_moe": _qwen2_moe,
    "olmoe": _olmoe,
    "mixtral": _mixtral,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
}


def spec_from_config(config: dict) -> ModelSpec:
    """The spec of a config.json, or a ValueError naming the field moeweave cannot run."""
    model_type = config.get("model_type")
    if model_type not in PARSERS:
        raise ValueError(
            f"unsupported architecture {model_type!r}: moeweave runs {', '.join(sorted(PARSERS))}"
        )
    fields = Fields(config, model_type)
    validate(fields)
    return PARSERS[model_type](fields)
