"""config.json, field by field: the one place that decides what a config value means and whether
moeweave can run it. `Fields` reads a field with transformers' default when config.json omits it
(DEFAULTS and ALIASES mirror the config classes; the tests check that) and raises a ValueError
naming the field, its value and the expectation when the value makes no sense. `validate` holds
every rule that spans fields and every refusal: a value transformers runs but moeweave does not
implement is refused here, never ignored. `rope` reads the RoPE parameters the same way.
docs/models.md lists every field of the six config classes with its status.
"""

import math

from moeweave.models.rope import NO_SCALING, RopeScaling

_MISSING = object()

# transformers' class defaults, for the fields moeweave reads that config.json may omit. The
# sizes that shape the tensors (vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
# intermediate sizes, expert counts, num_experts_per_tok, the MLA ranks and head dims) have no
# entry: a checkpoint without them is refused rather than given transformers' example model's.
DEFAULTS = {
    "mixtral": dict(num_key_value_heads=8, head_dim=None, hidden_act="silu", max_position_embeddings=131072,
                    rms_norm_eps=1e-5, eos_token_id=2, tie_word_embeddings=False, sliding_window=None),
    "qwen2_moe": dict(num_key_value_heads=16, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                      max_window_layers=28, decoder_sparse_step=1, shared_expert_intermediate_size=5632,
                      norm_topk_prob=False, mlp_only_layers=None, qkv_bias=True, layer_types=None,
                      eos_token_id=None),
    "qwen3_moe": dict(num_key_value_heads=4, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, attention_bias=False, use_sliding_window=False,
                      sliding_window=4096, decoder_sparse_step=1, norm_topk_prob=False, mlp_only_layers=None,
                      eos_token_id=None),
    "olmoe": dict(num_key_value_heads=None, hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-5,
                  eos_token_id=50279, tie_word_embeddings=False, attention_bias=False, clip_qkv=None,
                  norm_topk_prob=False),
    "deepseek_v2": dict(num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
                        rms_norm_eps=1e-6, eos_token_id=2, tie_word_embeddings=False, attention_bias=False,
                        mlp_bias=False, first_k_dense_replace=0, q_lora_rank=1536, n_group=None,
                        n_shared_experts=2, routed_scaling_factor=1.0, topk_group=None, topk_method="greedy",
                        norm_topk_prob=False),
    "deepseek_v3": dict(num_key_value_heads=128, n_shared_experts=1, routed_scaling_factor=2.5, q_lora_rank=1536,
                        n_group=8, topk_group=4, first_k_dense_replace=3, norm_topk_prob=True, hidden_act="silu",
                        max_position_embeddings=4096, rms_norm_eps=1e-6, eos_token_id=1,
                        tie_word_embeddings=False, rope_interleave=True, attention_bias=False,
                        num_nextn_predict_layers=1),
}  # fmt: skip

# Other names transformers accepts for a field (its attribute_map): alias -> field.
ALIASES = {
    "mixtral": {"num_experts": "num_local_experts"},
    "qwen2_moe": {},
    "qwen3_moe": {"num_experts": "num_local_experts"},
    "olmoe": {"num_local_experts": "num_experts"},
    "deepseek_v2": {"num_experts": "n_routed_experts"},
    "deepseek_v3": {"num_local_experts": "n_routed_experts", "num_mtp_layers": "num_nextn_predict_layers"},
}

# The field holding the number of routed experts.
EXPERTS = {
    "mixtral": "num_local_experts",
    "qwen2_moe": "num_experts",
    "qwen3_moe": "num_local_experts",
    "olmoe": "num_experts",
    "deepseek_v2": "n_routed_experts",
    "deepseek_v3": "n_routed_experts",
}

# rope_theta when config.json gives none (the config class's default_theta).
DEFAULT_ROPE_THETA = {"mixtral": 1_000_000.0}
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
_YARN_KEYS = {
    "original_max_position_embeddings",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "truncate",
}
ROPE_PARAMETERS = {
    "default": _ROPE_KEYS,
    "linear": _ROPE_KEYS | {"factor"},
    "yarn": _ROPE_KEYS | {"factor"} | _YARN_KEYS,
}


def _invalid(name: str, value, expectation: str) -> ValueError:
    return ValueError(f"config.json: {name} must be {expectation}, got {value!r}")


def _refused(name: str, value, why: str) -> ValueError:
    return ValueError(f"config.json: {name}={value!r} is not supported: {why}")


def _integer(name: str, value, minimum: int = 1, maximum: int | None = None, bound: str = "") -> int:
    """An int (not a bool, float or string) in [minimum, maximum]; `bound` names the maximum."""
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        limit = f" and <= {bound} ({maximum})" if maximum is not None else ""
        raise _invalid(name, value, f"an integer >= {minimum}{limit}")
    return value


def _number(name: str, value, minimum: float = 0.0) -> float:
    """A finite int or float strictly above minimum."""
    if type(value) not in (int, float) or not math.isfinite(value) or value <= minimum:
        raise _invalid(name, value, "a number" if minimum == -math.inf else f"a number > {minimum:g}")
    return float(value)


def _flag(name: str, value) -> bool:
    if type(value) is not bool:
        raise _invalid(name, value, "true or false")
    return value


class Fields:
    """One checkpoint's config.json as its architecture reads it."""

    def __init__(self, config: dict, architecture: str):
        self.architecture = architecture
        self.values = dict(config)
        self.written_as: dict[str, str] = {}  # field -> the alias config.json used, for messages
        for alias, name in ALIASES[architecture].items():
            if alias not in self.values:
                continue
            value = self.values.pop(alias)
            if name in self.values and self.values[name] != value:
                raise ValueError(
                    f"config.json: {alias}={value!r} and {name}={self.values[name]!r} are the same field "
                    f"for {architecture} (transformers reads {alias} as {name}) with different values"
                )
            self.values[name], self.written_as[name] = value, alias

    def name(self, field: str) -> str:
        return self.written_as.get(field, field)

    def raw(self, field: str, default=_MISSING):
        """The value config.json gives, else transformers' default, else `default`."""
        if field in self.values:
            return self.values[field]
        value = DEFAULTS[self.architecture].get(field, default)
        if value is _MISSING:
            raise ValueError(f"config.json: {field} is missing; a {self.architecture} model needs it")
        return value

    def size(self, field: str, minimum: int = 1, maximum: int | None = None, bound: str = "") -> int:
        return _integer(self.name(field), self.raw(field), minimum, maximum, bound)

    def optional_size(self, field: str) -> int | None:
        value = self.raw(field, None)
        return None if value is None else _integer(self.name(field), value)

    def number(self, field: str) -> float:
        return _number(self.name(field), self.raw(field))

    def optional_number(self, field: str) -> float | None:
        value = self.raw(field, None)
        return None if value is None else _number(self.name(field), value)

    def flag(self, field: str) -> bool:
        return _flag(self.name(field), self.raw(field))

    def supported(self, field: str, values: tuple, why: str, default=_MISSING):
        """The value if moeweave implements it; a refusal naming the field otherwise."""
        value = self.raw(field, default)
        if value not in values or type(value) is not type(values[0]):
            raise _refused(self.name(field), value, why)
        return value

    def num_experts(self) -> int:
        return self.size(EXPERTS[self.architecture])

    def kv_heads(self) -> int:
        """num_key_value_heads; null (or a class default of None) means one per attention head."""
        return self.optional_size("num_key_value_heads") or self.size("num_attention_heads")

    def head_dim(self) -> int:
        """Grouped-query attention's head size: head_dim, else hidden_size / num_attention_heads."""
        hidden, heads = self.size("hidden_size"), self.size("num_attention_heads")
        head_dim = self.optional_size("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise _invalid(
                    "hidden_size",
                    hidden,
                    f"a multiple of num_attention_heads ({heads}) when config.json gives no head_dim",
                )
            head_dim = hidden // heads
        if head_dim % 2:
            raise _invalid("head_dim", head_dim, "even (RoPE rotates pairs of dimensions)")
        return head_dim

    def sparse_layers(self) -> list[bool]:
        """Qwen's MoE placement: layer l is sparse when (l + 1) % decoder_sparse_step == 0 and l
        is not in mlp_only_layers."""
        layers, step = self.size("num_hidden_layers"), self.size("decoder_sparse_step")
        dense = self.raw("mlp_only_layers") or []
        if not isinstance(dense, list) or any(type(i) is not int or not 0 <= i < layers for i in dense):
            raise _invalid("mlp_only_layers", dense, f"a list of layer indices in [0, {layers})")
        return [(layer + 1) % step == 0 and layer not in dense for layer in range(layers)]


def rope(f: Fields) -> tuple[float, RopeScaling]:
    """(rope_theta, scaling) with transformers' precedence: a non-empty rope_scaling replaces
    rope_parameters; a rope_theta inside them wins over the top-level one, which wins over the
    class default; a top-level original_max_position_embeddings wins over YaRN's own, which
    defaults to max_position_embeddings."""
    source = "rope_scaling" if f.values.get("rope_scaling") else "rope_parameters"
    params = f.values.get(source) or {}
    if not isinstance(params, dict):
        raise _invalid(source, params, "a mapping of RoPE parameters")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_PARAMETERS:
        raise _refused(f"{source}.rope_type", kind, "moeweave implements default, linear and yarn RoPE")
    for key, value in params.items():
        if key not in ROPE_PARAMETERS[kind]:
            raise _refused(f"{source}.{key}", value, f"not a parameter of {kind} RoPE")
    partial = params.get("partial_rotary_factor", f.values.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _refused("partial_rotary_factor", partial, "these architectures rotate the whole head")
    if "rope_theta" in params:
        theta = _number(f"{source}.rope_theta", params["rope_theta"])
    else:
        theta = _number(
            "rope_theta", f.values.get("rope_theta", DEFAULT_ROPE_THETA.get(f.architecture, 10_000.0))
        )
    if kind == "default":
        return theta, NO_SCALING
    if "factor" not in params:
        raise ValueError(f"config.json: {source}.factor is missing; {kind} RoPE needs it")
    factor = _number(f"{source}.factor", params["factor"], minimum=0.0)
    if factor < 1.0:
        raise _invalid(f"{source}.factor", factor, "a number >= 1 (the context stretch)")
    if kind == "linear":
        return theta, RopeScaling("linear", factor)
    if "original_max_position_embeddings" in f.values:
        original = f.size("original_max_position_embeddings")
    elif "original_max_position_embeddings" in params:
        original = _integer(
            f"{source}.original_max_position_embeddings", params["original_max_position_embeddings"]
        )
    else:
        original = f.size("max_position_embeddings")

    def optional(key: str, minimum: float = -math.inf) -> float | None:
        value = params.get(key)
        return None if value is None else _number(f"{source}.{key}", value, minimum)

    return theta, RopeScaling(
        "yarn",
        factor,
        original_max_position_embeddings=original,
        beta_fast=optional("beta_fast", 0.0) or 32.0,
        beta_slow=optional("beta_slow", 0.0) or 1.0,
        mscale=optional("mscale"),
        mscale_all_dim=optional("mscale_all_dim"),
        attention_factor=optional("attention_factor", 0.0),
        truncate=_flag(f"{source}.truncate", params.get("truncate", True)),
    )


def validate(f: Fields) -> None:
    """Every rule a config must pass before moeweave builds a model from it."""
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    ):
        f.size(field)
    f.number("rms_norm_eps")
    f.flag("tie_word_embeddings")
    f.supported("hidden_act", ("silu", "swish"), "moeweave's experts and MLPs compute SiLU (silu / swish)")
    eos = f.raw("eos_token_id", None)
    if eos is not None and not (
        type(eos) is int or (isinstance(eos, list) and all(type(token) is int for token in eos))
    ):
        raise _invalid("eos_token_id", eos, "a token id, a list of token ids or null")
    if "quantization_config" in f.values:
        raise _refused(
            "quantization_config",
            f.values["quantization_config"],
            "moeweave loads unquantised safetensors weights (and quantises experts itself)",
        )
    experts = f.num_experts()
    f.size("num_experts_per_tok", maximum=experts, bound=f.name(EXPERTS[f.architecture]))
    if f.architecture.startswith("deepseek"):
        _validate_deepseek(f)
    else:
        _validate_gqa(f)
    rope(f)


def _validate_gqa(f: Fields) -> None:
    heads, kv_heads, head_dim = f.size("num_attention_heads"), f.kv_heads(), f.head_dim()
    if heads % kv_heads:
        raise _invalid("num_attention_heads", heads, f"a multiple of num_key_value_heads ({kv_heads})")
    arch = f.architecture
    if arch == "mixtral" and f.raw("sliding_window") is not None:
        raise _refused(
            "sliding_window", f.raw("sliding_window"), "sliding-window attention is not implemented"
        )
    if arch == "olmoe":
        if head_dim * heads != f.size("hidden_size"):
            raise _refused(
                "head_dim",
                head_dim,
                "OLMoE's q_norm and k_norm span hidden_size, so head_dim must "
                "be hidden_size / num_attention_heads",
            )
        f.optional_number("clip_qkv")
    if arch in ("qwen3_moe", "olmoe"):
        f.flag("attention_bias")
    if arch in ("qwen2_moe", "qwen3_moe"):
        f.size("moe_intermediate_size")
        f.sparse_layers()
    if arch == "qwen2_moe":
        f.flag("qkv_bias")
        f.size("shared_expert_intermediate_size")
        _refuse_qwen2_sliding_layers(f)
    if arch == "qwen3_moe" and f.flag("use_sliding_window") and f.raw("sliding_window") is not None:
        raise _refused(
            "use_sliding_window",
            True,
            f"sliding-window attention (sliding_window={f.raw('sliding_window')}) is not implemented",
        )
    if arch != "mixtral":
        f.flag("norm_topk_prob")


def _refuse_qwen2_sliding_layers(f: Fields) -> None:
    """Qwen2-MoE's layer_types, given or derived as transformers derives them: sliding-window
    layers are refused, as is any layer type Qwen2-MoE has no attention for."""
    layers = f.size("num_hidden_layers")
    types = f.raw("layer_types")
    if types is None:
        if not f.flag("use_sliding_window"):
            return
        window_layers = f.size("max_window_layers", minimum=0)
        sliding = [layer for layer in range(layers) if (layer + 1) % 2 and layer < window_layers]
        if sliding:
            raise _refused(
                "use_sliding_window",
                True,
                f"it makes layers {sliding} sliding-window attention "
                f"(max_window_layers={window_layers}), which is not implemented",
            )
        return
    if not isinstance(types, list) or len(types) != layers:
        raise _invalid("layer_types", types, f"a list of {layers} layer types (num_hidden_layers)")
    if any(kind not in ("full_attention", "attention") for kind in types):
        raise _refused("layer_types", types, "only full_attention layers are implemented (no sliding window)")


def _validate_deepseek(f: Fields) -> None:
    for field in (
        "moe_intermediate_size",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "v_head_dim",
        "n_shared_experts",
    ):
        f.size(field)
    if f.size("qk_rope_head_dim") % 2:
        raise _invalid(
            "qk_rope_head_dim", f.raw("qk_rope_head_dim"), "even (RoPE rotates pairs of dimensions)"
        )
    f.optional_size("q_lora_rank")
    heads = f.size("num_attention_heads")
    if f.kv_heads() != heads:
        raise _refused(
            "num_key_value_heads",
            f.raw("num_key_value_heads"),
            "multi-head latent attention "
            f"expands keys and values for every head, so it must equal num_attention_heads ({heads})",
        )
    f.size("first_k_dense_replace", minimum=0, maximum=f.size("num_hidden_layers"), bound="num_hidden_layers")
    f.number("routed_scaling_factor")
    f.flag("attention_bias")
    # DeepSeek's own configs carry these for its remote code; transformers hard-codes their values.
    f.supported("moe_layer_freq", (1,), "every layer from first_k_dense_replace on is MoE", default=1)
    if f.architecture == "deepseek_v2":
        f.supported("scoring_func", ("softmax",), "DeepSeek-V2 routes on softmax scores", default="softmax")
        f.supported("mlp_bias", (False,), "the dense and shared-expert MLPs have no biases here")
        f.supported(
            "norm_topk_prob",
            (False,),
            "transformers' DeepSeek-V2 never renormalises while DeepSeek's "
            "reference code does, so the intended weights are ambiguous",
        )
        method = f.supported(
            "topk_method", ("greedy", "group_limited_greedy"), "DeepSeek-V2 routes greedily or group-limited"
        )
        if method == "group_limited_greedy":
            _validate_groups(f, min_per_group=1)
    else:
        f.supported("scoring_func", ("sigmoid",), "DeepSeek-V3 routes on sigmoid scores", default="sigmoid")
        f.supported("topk_method", ("noaux_tc",), "DeepSeek-V3 routes with noaux_tc", default="noaux_tc")
        f.flag("norm_topk_prob")
        f.flag("rope_interleave")
        f.size("num_nextn_predict_layers", minimum=0)
        # A group is scored by its two best experts.
        _validate_groups(f, min_per_group=2)


def _validate_groups(f: Fields, min_per_group: int) -> None:
    experts, expert_field = f.num_experts(), f.name(EXPERTS[f.architecture])
    groups = f.size("n_group")
    if experts % groups or experts // groups < min_per_group:
        raise _invalid(
            "n_group",
            groups,
            f"a divisor of {expert_field} ({experts}) leaving >= {min_per_group} experts per group",
        )
    chosen = f.size("topk_group", maximum=groups, bound="n_group")
    reachable = chosen * (experts // groups)
    f.size("num_experts_per_tok", maximum=reachable, bound="the experts in topk_group groups")
