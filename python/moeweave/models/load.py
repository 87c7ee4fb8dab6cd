"""moeweave.models.load: a Hugging Face MoE checkpoint directory -> MoEModel on moeweave's
kernels, with the routed experts in the requested format.

Expert formats: "fp32" (plain torch, exact), "bf16" (fused MoE op), "int8" / "int4" / "int3" /
"int2" (fused MoE op on packed weights; group size 64; 2 and 3 bits asymmetric with the MSE
clipping search). Dense weights run in `dtype` (default: fp32).
"""

from pathlib import Path

import torch
from tqdm import tqdm

from moeweave.models.checkpoint import Checkpoint
from moeweave.models.experts import FusedExperts, TorchExperts
from moeweave.models.layers import AttentionWeights, MLPWeights
from moeweave.models.mla import MLAWeights
from moeweave.models.model import DecoderLayer, MoEModel
from moeweave.models.moe_block import MoEBlock
from moeweave.models.spec import ModelSpec, spec_from_config
from moeweave.quant import ExpertTable, quantize

EXPERT_FORMATS = ("fp32", "bf16", "int8", "int4", "int3", "int2")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _expert_format(experts: str, w: torch.Tensor):
    if experts == "fp32":
        return w.float()
    if experts == "bf16":
        return w.to(torch.bfloat16).contiguous()
    bits = int(experts[3:])
    return quantize(w.float(), bits=bits, group_size=64, sym=bits >= 4)


def _attention(ck: Checkpoint, spec: ModelSpec, prefix: str, dtype: torch.dtype) -> AttentionWeights:
    hidden, q_dim, kv_dim = (
        spec.hidden_size,
        spec.num_heads * spec.head_dim,
        spec.num_kv_heads * spec.head_dim,
    )

    def take(name, shape):
        return ck.take(f"{prefix}.{name}", shape).to(dtype)

    w = AttentionWeights(
        q=take("q_proj.weight", (q_dim, hidden)),
        k=take("k_proj.weight", (kv_dim, hidden)),
        v=take("v_proj.weight", (kv_dim, hidden)),
        o=take("o_proj.weight", (hidden, q_dim)),
    )
    if spec.qkv_bias:
        w.q_bias, w.k_bias, w.v_bias = (
            take("q_proj.bias", (q_dim,)),
            take("k_proj.bias", (kv_dim,)),
            take("v_proj.bias", (kv_dim,)),
        )
    if spec.qk_norm == "head":
        w.q_norm, w.k_norm = take("q_norm.weight", (spec.head_dim,)), take("k_norm.weight", (spec.head_dim,))
    elif spec.qk_norm == "full":
        w.q_norm, w.k_norm = take("q_norm.weight", (q_dim,)), take("k_norm.weight", (kv_dim,))
    return w


def _mla(ck: Checkpoint, spec: ModelSpec, prefix: str, dtype: torch.dtype) -> MLAWeights:
    hidden, heads, rope = spec.hidden_size, spec.num_heads, spec.qk_rope_head_dim
    q_dim = heads * (spec.qk_nope_head_dim + rope)

    def take(name, shape):
        return ck.take(f"{prefix}.{name}", shape).to(dtype)

    w = MLAWeights(
        kv_a=take("kv_a_proj_with_mqa.weight", (spec.kv_lora_rank + rope, hidden)),
        kv_norm=take("kv_a_layernorm.weight", (spec.kv_lora_rank,)),
        kv_b=take("kv_b_proj.weight", (heads * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank)),
        o=take("o_proj.weight", (hidden, heads * spec.v_head_dim)),
    )
    if spec.q_lora_rank is None:
        w.q = take("q_proj.weight", (q_dim, hidden))
    else:
        w.q_a = take("q_a_proj.weight", (spec.q_lora_rank, hidden))
        w.q_norm = take("q_a_layernorm.weight", (spec.q_lora_rank,))
        w.q_b = take("q_b_proj.weight", (q_dim, spec.q_lora_rank))
        if spec.qkv_bias:
            w.q_a_bias = take("q_a_proj.bias", (spec.q_lora_rank,))
    if spec.qkv_bias:
        w.kv_a_bias = take("kv_a_proj_with_mqa.bias", (spec.kv_lora_rank + rope,))
    return w


def _mlp(
    ck: Checkpoint, prefix: str, names: tuple[str, str, str], hidden: int, inter: int, dtype
) -> MLPWeights:
    gate, up, down = names
    return MLPWeights(
        gate=ck.take(f"{prefix}.{gate}.weight", (inter, hidden)).to(dtype),
        up=ck.take(f"{prefix}.{up}.weight", (inter, hidden)).to(dtype),
        down=ck.take(f"{prefix}.{down}.weight", (hidden, inter)).to(dtype),
    )


def _load_tokenizer(path: Path):
    if not (path / "tokenizer.json").exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


def load(path: str | Path, experts: str = "bf16", dtype: torch.dtype = torch.float32) -> MoEModel:
    """Load a Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2 or DeepSeek-V3 checkpoint
    (config.json + safetensors)."""
    if experts not in EXPERT_FORMATS:
        raise ValueError(f"load: experts must be one of {EXPERT_FORMATS}, got {experts!r}")
    ck = Checkpoint(path)
    spec = spec_from_config(ck.config)
    hidden = spec.hidden_size
    embed = ck.take("model.embed_tokens.weight", (spec.vocab_size, hidden)).to(dtype)
    layers, expert_weights = [], {}
    for index in tqdm(range(spec.num_layers), desc=f"loading {Path(path).name}", unit="layer", leave=False):
        prefix = f"model.layers.{index}"
        if spec.moe_layers[index]:
            moe = f"{prefix}.{spec.moe_prefix}"
            expert_weights[index] = [
                tuple(
                    _expert_format(experts, ck.take(f"{moe}.experts.{e}.{name}.weight", shape))
                    for name, shape in zip(
                        spec.expert_names,
                        [(spec.moe_intermediate_size, hidden)] * 2 + [(hidden, spec.moe_intermediate_size)],
                        strict=True,
                    )
                )
                for e in range(spec.num_experts)
            ]
            block = MoEBlock(
                spec, index, ck.take(f"{moe}.gate.weight", (spec.num_experts, hidden)).to(dtype), None
            )
            if spec.shared_expert_intermediate_size:
                block.shared = _mlp(ck, f"{moe}.{spec.shared_expert_name}", ("gate_proj", "up_proj", "down_proj"), hidden,
                                    spec.shared_expert_intermediate_size, dtype)  # fmt: skip
                if spec.router == "deepseek_v3":
                    block.correction_bias = ck.take(
                        f"{moe}.gate.e_score_correction_bias", (spec.num_experts,)
                    ).float()
                if spec.shared_expert_gated:
                    block.shared_gate = ck.take(f"{moe}.shared_expert_gate.weight", (1, hidden)).to(dtype)
            mlp = block
        else:
            mlp = _mlp(
                ck,
                f"{prefix}.mlp",
                ("gate_proj", "up_proj", "down_proj"),
                hidden,
                spec.dense_intermediate_size,
                dtype,
            )
        layers.append(
            DecoderLayer(
                input_norm=ck.take(f"{prefix}.input_layernorm.weight", (hidden,)).to(dtype),
                attention=(_mla if spec.attention == "mla" else _attention)(
                    ck, spec, f"{prefix}.self_attn", dtype
                ),
                post_attention_norm=ck.take(f"{prefix}.post_attention_layernorm.weight", (hidden,)).to(dtype),
                mlp=mlp,
            )
        )
    provider = (
        TorchExperts(expert_weights)
        if experts == "fp32"
        else FusedExperts({layer: ExpertTable(weights) for layer, weights in expert_weights.items()})
    )
    for layer in layers:
        if isinstance(layer.mlp, MoEBlock):
            layer.mlp.experts = provider
    norm = ck.take("model.norm.weight", (hidden,)).to(dtype)
    if "lm_head.weight" in ck or not spec.tie_word_embeddings:
        lm_head = ck.take("lm_head.weight", (spec.vocab_size, hidden)).to(dtype)
    else:
        lm_head = embed
    extra = [name for name in ck.untaken() if not name.endswith(_IGNORED_SUFFIXES)]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ValueError(
            f"checkpoint {ck.path} has tensors this {spec.architecture} model does not use: {shown}"
        )
    model = MoEModel(spec, embed, layers, norm, lm_head, tokenizer=_load_tokenizer(ck.path))
    model.eos_token_id = ck.config.get("eos_token_id")
    return model
