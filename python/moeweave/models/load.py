"""moeweave.models.load: a Hugging Face MoE checkpoint directory -> MoEModel on moeweave's
kernels, with the routed experts in the requested format.

Expert formats: "fp32" (plain torch, exact), and the fused MoE op's formats of
moeweave.quant.policy: "bf16", "int8" / "int4" / "int3" / "int2" (packed weights).

Projection formats: the attention, dense-MLP, shared-expert and LM-head projections are
"float" (in `dtype`, default fp32), "int8" or "int4" (packed in groups of 64 like the experts, run
on quant_matmul; a decode step reads a half or a quarter of bf16's bytes outside the experts).
The default follows the experts: "int8" when they are quantised (their accuracy cost on the
bundled model is a fraction of the experts' own, docs/benchmarks.md), "float" otherwise. The
embedding stays a gather in `dtype`.
"""

from pathlib import Path

import torch
from tqdm import tqdm

from moeweave.formats.expert_naming import ARCHITECTURES as EXPERT_NAMING
from moeweave.formats.hf_checkpoint import Checkpoint
from moeweave.formats.paths import confined
from moeweave.models.allocator import returning_freed_memory
from moeweave.models.expert_parallel import ExpertParallel, expert_slice
from moeweave.models.experts import ExpertProvider, FusedExperts, TorchExperts
from moeweave.models.layers import AttentionWeights, MLPWeights
from moeweave.models.mla import MLAWeights
from moeweave.models.model import DecoderLayer, MoEModel
from moeweave.models.moe_block import MoEBlock
from moeweave.models.spec import ModelSpec, spec_from_config
from moeweave.quant import ExpertTable
from moeweave.quant.policy import FUSED_FORMATS, QUANTISED_BITS, fused_projection, quantize_as

EXPERT_FORMATS = ("fp32", *FUSED_FORMATS)
PROJECTION_FORMATS = ("float", "int8", "int4")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
# Expert bytes requested from the disk ahead of the one being converted (_read_ahead).
_READ_AHEAD_BYTES = 64 << 20


def _expert_format(experts: str, w: torch.Tensor):
    return w.float() if experts == "fp32" else fused_projection(w, experts)


def _read_ahead(ck: Checkpoint, names: list[tuple[str, tuple]], window: int = _READ_AHEAD_BYTES):
    """Yields `names` ((name, shape) pairs) in order, having asked the kernel to read the one
    yielded and the tensors up to `window` bytes after it: a cold load's disk reads then run while
    the tensors before are converted."""
    advised, beyond = 0, 0  # tensors asked for so far; bytes of those after the one yielded
    for i, item in enumerate(names):
        if advised == i:
            ck.will_need(item[0])
            advised += 1
        else:
            beyond -= ck.nbytes(item[0])
        while advised < len(names) and beyond < window:
            ck.will_need(names[advised][0])
            beyond += ck.nbytes(names[advised][0])
            advised += 1
        yield item


class _ReadBuffer:
    """One buffer that expert tensors are read into in turn, for a packed format (whose weights
    are new tensors, never views of their source): every read reuses its pages, where a fresh
    tensor per read would fault in and zero as many bytes as the checkpoint's experts."""

    def __init__(self, ck: Checkpoint):
        self.ck, self.buffer = ck, torch.empty(0, dtype=torch.uint8)

    def take(self, name: str, shape) -> torch.Tensor:
        if self.buffer.numel() < self.ck.nbytes(name):
            self.buffer = torch.empty(self.ck.nbytes(name), dtype=torch.uint8)
        return self.ck.take(name, shape, self.buffer)


class _Reader:
    """Takes checkpoint tensors: projections in the chosen projection format, everything else
    (norms, biases, routers) in the dense dtype."""

    def __init__(self, ck: Checkpoint, dtype: torch.dtype, projections: str):
        self.ck, self.dtype, self.projections = ck, dtype, projections

    def __call__(self, name: str, shape) -> torch.Tensor:
        return self.ck.take(name, shape).to(self.dtype)

    def projection(self, name: str, shape):
        return self.convert(self.ck.take(name, shape))

    def convert(self, w: torch.Tensor):
        return w.to(self.dtype) if self.projections == "float" else quantize_as(w, self.projections)


def _attention(take: _Reader, spec: ModelSpec, prefix: str) -> AttentionWeights:
    hidden, q_dim, kv_dim = (
        spec.hidden_size,
        spec.num_heads * spec.head_dim,
        spec.num_kv_heads * spec.head_dim,
    )
    w = AttentionWeights(
        q=take.projection(f"{prefix}.q_proj.weight", (q_dim, hidden)),
        k=take.projection(f"{prefix}.k_proj.weight", (kv_dim, hidden)),
        v=take.projection(f"{prefix}.v_proj.weight", (kv_dim, hidden)),
        o=take.projection(f"{prefix}.o_proj.weight", (hidden, q_dim)),
    )
    if spec.qkv_bias:
        w.q_bias = take(f"{prefix}.q_proj.bias", (q_dim,))
        w.k_bias = take(f"{prefix}.k_proj.bias", (kv_dim,))
        w.v_bias = take(f"{prefix}.v_proj.bias", (kv_dim,))
    if spec.o_bias:
        w.o_bias = take(f"{prefix}.o_proj.bias", (hidden,))
    norm_shapes = {"head": (spec.head_dim, spec.head_dim), "full": (q_dim, kv_dim)}.get(spec.qk_norm)
    if norm_shapes:
        w.q_norm = take(f"{prefix}.q_norm.weight", (norm_shapes[0],))
        w.k_norm = take(f"{prefix}.k_norm.weight", (norm_shapes[1],))
    return w


def _mla(take: _Reader, spec: ModelSpec, prefix: str) -> MLAWeights:
    hidden, heads, rope, latent = spec.hidden_size, spec.num_heads, spec.qk_rope_head_dim, spec.kv_lora_rank
    q_dim = heads * (spec.qk_nope_head_dim + rope)
    w = MLAWeights(
        kv_a=take.projection(f"{prefix}.kv_a_proj_with_mqa.weight", (latent + rope, hidden)),
        kv_norm=take(f"{prefix}.kv_a_layernorm.weight", (latent,)),
        **_kv_b_per_head(take, spec, prefix),
        o=take.projection(f"{prefix}.o_proj.weight", (hidden, heads * spec.v_head_dim)),
    )
    if spec.q_lora_rank is None:
        w.q = take.projection(f"{prefix}.q_proj.weight", (q_dim, hidden))
    else:
        w.q_a = take.projection(f"{prefix}.q_a_proj.weight", (spec.q_lora_rank, hidden))
        w.q_norm = take(f"{prefix}.q_a_layernorm.weight", (spec.q_lora_rank,))
        w.q_b = take.projection(f"{prefix}.q_b_proj.weight", (q_dim, spec.q_lora_rank))
        if spec.qkv_bias:
            w.q_a_bias = take(f"{prefix}.q_a_proj.bias", (spec.q_lora_rank,))
    if spec.qkv_bias:
        w.kv_a_bias = take(f"{prefix}.kv_a_proj_with_mqa.bias", (latent + rope,))
    if spec.o_bias:
        w.o_bias = take(f"{prefix}.o_proj.bias", (hidden,))
    return w


def _kv_b_per_head(take: _Reader, spec: ModelSpec, prefix: str) -> dict[str, torch.Tensor]:
    """kv_b_proj [nH * (N + Dv), C] as W_UK [nH, N, C] and W_UV [nH, C, Dv], in the dense dtype
    (not a packed projection: decode steps fold them into the query and output per head)."""
    heads, nope, v_dim, latent = spec.num_heads, spec.qk_nope_head_dim, spec.v_head_dim, spec.kv_lora_rank
    kv_b = take(f"{prefix}.kv_b_proj.weight", (heads * (nope + v_dim), latent)).view(
        heads, nope + v_dim, latent
    )
    return {"w_uk": kv_b[:, :nope].contiguous(), "w_uv": kv_b[:, nope:].transpose(1, 2).contiguous()}


def _mlp(take: _Reader, prefix: str, names: tuple[str, str, str], hidden: int, inter: int) -> MLPWeights:
    gate, up, down = names
    return MLPWeights(
        gate=take.projection(f"{prefix}.{gate}.weight", (inter, hidden)),
        up=take.projection(f"{prefix}.{up}.weight", (inter, hidden)),
        down=take.projection(f"{prefix}.{down}.weight", (hidden, inter)),
    )


def _moe_block(take: _Reader, spec: ModelSpec, index: int, moe: str) -> MoEBlock:
    hidden = spec.hidden_size
    block = MoEBlock(spec, index, take(f"{moe}.gate.weight", (spec.num_experts, hidden)), None)
    if spec.router == "deepseek_v3":
        block.correction_bias = take.ck.take(
            f"{moe}.gate.e_score_correction_bias", (spec.num_experts,)
        ).float()
    if spec.shared_expert_intermediate_size:
        block.shared = _mlp(take, f"{moe}.{spec.shared_expert_name}", _MLP_NAMES, hidden,
                            spec.shared_expert_intermediate_size)  # fmt: skip
        if spec.shared_expert_gated:
            block.shared_gate = take(f"{moe}.shared_expert_gate.weight", (1, hidden))
    return block


def default_projections(experts: str | ExpertProvider) -> str:
    """ "int8" for quantised experts (a format of QUANTISED_BITS, or a provider: expert stores hold
    packed experts), else "float": whoever keeps bf16 or fp32 experts wants that precision."""
    return "int8" if not isinstance(experts, str) or experts in QUANTISED_BITS else "float"


def _load_tokenizer(path: Path):
    if not (path / "tokenizer.json").exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(confined(path, "tokenizer.json", str(path))))


def load(
    path: str | Path,
    experts: str | ExpertProvider = "bf16",
    dtype: torch.dtype = torch.float32,
    projections: str | None = None,
    expert_parallel=None,
) -> MoEModel:
    """Load a Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2 or DeepSeek-V3 checkpoint
    (config.json + safetensors). `experts` is a format of EXPERT_FORMATS, or an expert provider
    that supplies the routed experts itself (an expert cache over an expert store, whose
    directory holds the config and the dense weights): their tensors are then not read.
    `projections` is a format of PROJECTION_FORMATS; None picks default_projections(experts).
    `expert_parallel` (a torch.distributed process group, e.g. torch.distributed.group.WORLD):
    this rank reads and holds only its slice of every layer's routed experts and exchanges tokens
    with the other ranks (moeweave.models.expert_parallel); every rank must load the same way.
    Tensors are read and converted one at a time, their memory returned as they go (allocator.py):
    the resident peak stays near the loaded model's size."""
    if expert_parallel is not None and not isinstance(experts, str):
        raise ValueError(
            "load: expert_parallel splits experts load() reads; an expert provider holds its own"
        )
    if isinstance(experts, str) and experts not in EXPERT_FORMATS:
        raise ValueError(f"load: experts must be one of {EXPERT_FORMATS}, got {experts!r}")
    projections = projections or default_projections(experts)
    if projections not in PROJECTION_FORMATS:
        raise ValueError(f"load: projections must be one of {PROJECTION_FORMATS}, got {projections!r}")
    with returning_freed_memory(), Checkpoint(path) as ck:
        return _load(ck, experts, dtype, projections, expert_parallel)


def _load(
    ck: Checkpoint, experts: str | ExpertProvider, dtype: torch.dtype, projections: str, group
) -> MoEModel:
    provided = not isinstance(experts, str)
    spec = spec_from_config(ck.config)
    held = range(spec.num_experts)
    if group is not None:
        held = expert_slice(spec.num_experts, torch.distributed.get_rank(group),
                            torch.distributed.get_world_size(group))  # fmt: skip
    take = _Reader(ck, dtype, projections)
    hidden, inter = spec.hidden_size, spec.moe_intermediate_size
    expert_shapes = [(inter, hidden), (inter, hidden), (hidden, inter)]
    naming = EXPERT_NAMING[spec.architecture]
    read_expert = _ReadBuffer(ck).take if not provided and experts in QUANTISED_BITS else ck.take
    embed = take("model.embed_tokens.weight", (spec.vocab_size, hidden))
    layers, expert_weights = [], {}
    for index in tqdm(range(spec.num_layers), desc=f"loading {ck.directory.name}", unit="layer", leave=False):
        prefix = f"model.layers.{index}"
        if spec.moe_layers[index]:
            moe = f"{prefix}.{naming.moe_module}"
            names = (
                []
                if provided
                else [
                    (naming.tensor(index, e, p), shape) for e in held for p, shape in enumerate(expert_shapes)
                ]
            )
            converted = [
                _expert_format(experts, read_expert(name, shape)) for name, shape in _read_ahead(ck, names)
            ]
            expert_weights[index] = [tuple(converted[i : i + 3]) for i in range(0, len(converted), 3)]
            for e in range(spec.num_experts):  # other ranks' experts, under expert parallelism
                for p, shape in enumerate(expert_shapes) if e not in held else ():
                    ck.skip(naming.tensor(index, e, p), shape)
            mlp = _moe_block(take, spec, index, moe)
        else:
            mlp = _mlp(take, f"{prefix}.mlp", _MLP_NAMES, hidden, spec.dense_intermediate_size)
        attention = _mla if spec.attention == "mla" else _attention
        layers.append(
            DecoderLayer(
                input_norm=take(f"{prefix}.input_layernorm.weight", (hidden,)),
                attention=attention(take, spec, f"{prefix}.self_attn"),
                post_attention_norm=take(f"{prefix}.post_attention_layernorm.weight", (hidden,)),
                mlp=mlp,
            )
        )
    if provided:
        provider = experts
    elif experts == "fp32":
        provider = TorchExperts(expert_weights)
    else:
        provider = FusedExperts({layer: ExpertTable(weights) for layer, weights in expert_weights.items()})
    if group is not None:
        provider = ExpertParallel(provider, spec.num_experts, sorted(expert_weights), hidden, dtype, group)
    for layer in layers:
        if isinstance(layer.mlp, MoEBlock):
            layer.mlp.experts = provider
    norm = take("model.norm.weight", (hidden,))
    if "lm_head.weight" in ck or not spec.tie_word_embeddings:
        lm_head = take.projection("lm_head.weight", (spec.vocab_size, hidden))
    else:
        lm_head = take.convert(embed)
    # DeepSeek-V3's multi-token-prediction layers follow the decoder layers; the forward never reads them.
    mtp = tuple(f"model.layers.{spec.num_layers + i}." for i in range(spec.mtp_layers))
    extra = [
        name for name in ck.untaken() if not name.endswith(_IGNORED_SUFFIXES) and not name.startswith(mtp)
    ]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ValueError(
            f"checkpoint {ck.directory} has tensors this {spec.architecture} model does not use: {shown}"
        )
    model = MoEModel(spec, embed, layers, norm, lm_head, tokenizer=_load_tokenizer(ck.directory))
    model.eos_token_id = ck.config.get("eos_token_id")
    return model
