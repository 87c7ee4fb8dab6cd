"""Random-weight checkpoints with real MoE expert shapes but fewer layers, for benchmarks.

A benchmark of expert offloading needs expert matrices of production size and a checkpoint
larger than the caches it measures, but not trained weights. This writes Qwen3-30B-A3B,
Mixtral-8x7B or DeepSeek-V2-Lite (the base of DeepSeek's released ESFT adapters) shapes (any number of layers) as a standard Hugging Face directory in the on-disk
per-expert layout transformers reads and writes. Tensors are generated and written one row
block at a time straight into safetensors shards, so memory stays at one block however many GB
the checkpoint holds. Values are N(0, initializer_range) (norm gains 1), seeded per tensor, so
the same command writes the same bytes; token embeddings are N(0, 1) (EMBEDDING_STD says why).
"""

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import DeepseekV2Config, MixtralConfig, PretrainedConfig, Qwen3MoeConfig

from moeweave.envs import cache_dir
from moeweave.recipes.demo_model.paths import PACKAGE_ROOT

# Hugging Face's long-standing default shard size.
SHARD_BYTES = 5 * 10**9
# Elements generated per block: 64 MiB of fp32 scratch.
BLOCK_ELEMENTS = 1 << 24

PRESETS: dict[str, tuple[type[PretrainedConfig], dict]] = {
    # Values from the published config.json of Qwen/Qwen3-30B-A3B.
    "qwen3-30b-a3b": (
        Qwen3MoeConfig,
        dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            max_position_embeddings=40960,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            bos_token_id=151643,
            eos_token_id=151645,
            architectures=["Qwen3MoeForCausalLM"],
        ),
    ),
    # Values from the published config.json of mistralai/Mixtral-8x7B-v0.1.
    "mixtral-8x7b": (
        MixtralConfig,
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=32768,
            rope_theta=1e6,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            architectures=["MixtralForCausalLM"],
        ),
    ),
    # Values from the published config.json of deepseek-ai/DeepSeek-V2-Lite, without its YaRN
    # scaling (the shapes are what a benchmark needs).
    "deepseek-v2-lite": (
        DeepseekV2Config,
        dict(
            vocab_size=102400,
            hidden_size=2048,
            intermediate_size=10944,
            moe_intermediate_size=1408,
            num_hidden_layers=27,
            num_attention_heads=16,
            num_key_value_heads=16,
            n_shared_experts=2,
            n_routed_experts=64,
            num_experts_per_tok=6,
            first_k_dense_replace=1,
            kv_lora_rank=512,
            q_lora_rank=None,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            topk_method="greedy",
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.0,
            norm_topk_prob=False,
            max_position_embeddings=163840,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            bos_token_id=100000,
            eos_token_id=100001,
            architectures=["DeepseekV2ForCausalLM"],
        ),
    ),
}


def preset_config(name: str, num_layers: int, **overrides) -> PretrainedConfig:
    """The preset's config with `num_layers` layers; `overrides` shrink it (tests use tiny widths)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    cls, values = PRESETS[name]
    return cls(**{**values, "num_hidden_layers": num_layers, **overrides, "dtype": "bfloat16"})


def tensor_specs(cfg: PretrainedConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in the on-disk layout, in file order."""
    h, v = cfg.hidden_size, cfg.vocab_size
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    yield "model.embed_tokens.weight", (v, h)
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}"
        yield f"{p}.input_layernorm.weight", (h,)
        if cfg.model_type == "deepseek_v2":
            yield from _deepseek_v2_layer(cfg, p, layer)
            continue
        yield f"{p}.self_attn.q_proj.weight", (q, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q)
        if cfg.model_type == "qwen3_moe":
            yield f"{p}.self_attn.q_norm.weight", (head_dim,)
            yield f"{p}.self_attn.k_norm.weight", (head_dim,)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        if cfg.model_type == "qwen3_moe":
            i = cfg.moe_intermediate_size
            yield f"{p}.mlp.gate.weight", (cfg.num_experts, h)
            for e in range(cfg.num_experts):
                yield f"{p}.mlp.experts.{e}.gate_proj.weight", (i, h)
                yield f"{p}.mlp.experts.{e}.up_proj.weight", (i, h)
                yield f"{p}.mlp.experts.{e}.down_proj.weight", (h, i)
        else:
            i = cfg.intermediate_size
            yield f"{p}.block_sparse_moe.gate.weight", (cfg.num_local_experts, h)
            for e in range(cfg.num_local_experts):
                yield f"{p}.block_sparse_moe.experts.{e}.w1.weight", (i, h)
                yield f"{p}.block_sparse_moe.experts.{e}.w2.weight", (h, i)
                yield f"{p}.block_sparse_moe.experts.{e}.w3.weight", (i, h)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def _deepseek_v2_layer(cfg: PretrainedConfig, p: str, layer: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """A DeepSeek-V2 layer after its input norm: MLA without a query LoRA, then a dense MLP
    (the first first_k_dense_replace layers) or the MoE block with its shared experts."""
    h, heads, rope = cfg.hidden_size, cfg.num_attention_heads, cfg.qk_rope_head_dim
    yield f"{p}.self_attn.q_proj.weight", (heads * (cfg.qk_nope_head_dim + rope), h)
    yield f"{p}.self_attn.kv_a_proj_with_mqa.weight", (cfg.kv_lora_rank + rope, h)
    yield f"{p}.self_attn.kv_a_layernorm.weight", (cfg.kv_lora_rank,)
    yield (
        f"{p}.self_attn.kv_b_proj.weight",
        (heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank),
    )
    yield f"{p}.self_attn.o_proj.weight", (h, heads * cfg.v_head_dim)
    yield f"{p}.post_attention_layernorm.weight", (h,)
    if layer < cfg.first_k_dense_replace:
        yield from _gated(f"{p}.mlp", cfg.intermediate_size, h)
        return
    yield f"{p}.mlp.gate.weight", (cfg.n_routed_experts, h)
    for e in range(cfg.n_routed_experts):
        yield from _gated(f"{p}.mlp.experts.{e}", cfg.moe_intermediate_size, h)
    yield from _gated(f"{p}.mlp.shared_experts", cfg.n_shared_experts * cfg.moe_intermediate_size, h)


def _gated(prefix: str, inter: int, h: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield f"{prefix}.gate_proj.weight", (inter, h)
    yield f"{prefix}.up_proj.weight", (inter, h)
    yield f"{prefix}.down_proj.weight", (h, inter)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _plan_shards(specs: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards, current, size = [], [], 0
    for name, shape in specs:
        nbytes = 2 * _numel(shape)
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    return [*shards, current]


# Token embeddings get unit scale: each token's identity then reaches the routers of every layer,
# as in a trained model. At the initializer's scale the attention outputs swamp it, and deeper
# layers route nearly every token to the same few experts (17-25 of 64 used over 32 tokens
# against 62-64 at unit scale), which a benchmark of expert offloading must not measure.
EMBEDDING_STD = 1.0


def _write_tensor(f, name: str, shape: tuple[int, ...], index: int, seed: int, std: float) -> int:
    if name.endswith("norm.weight"):
        f.write(torch.ones(shape, dtype=torch.bfloat16).view(torch.int16).numpy().data)
        return 2 * _numel(shape)
    if name.endswith("embed_tokens.weight"):
        std = EMBEDDING_STD
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    rows, cols = shape if len(shape) == 2 else (1, shape[0])
    block_rows = max(1, BLOCK_ELEMENTS // cols)
    for r in range(0, rows, block_rows):
        block = torch.randn(min(block_rows, rows - r), cols, generator=gen).mul_(std)  # [r, cols]
        f.write(block.to(torch.bfloat16).view(torch.int16).numpy().data)
    return 2 * rows * cols


def _write_shard(
    path: Path, tensors: list[tuple[str, tuple[int, ...]]], first_index: int, seed: int, std: float, bar: tqdm
) -> None:
    header, offset = {}, 0
    for name, shape in tensors:
        nbytes = 2 * _numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    # safetensors allows space padding; 8-byte alignment keeps tensor data aligned for mmap readers.
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, (name, shape) in enumerate(tensors):
            bar.update(_write_tensor(f, name, shape, first_index + i, seed, std))


def default_output_dir(name: str, num_layers: int) -> Path:
    return cache_dir() / "checkpoints" / f"random-{name}-{num_layers}layers"


def write_random_checkpoint(cfg: PretrainedConfig, out: Path, seed: int = 0) -> Path:
    """Writes config.json, safetensors shards and their index into `out` (never inside the package)."""
    out = Path(out).resolve()
    if out.is_relative_to(PACKAGE_ROOT):
        raise ValueError(f"refusing to write a random checkpoint inside the package ({PACKAGE_ROOT}): {out}")
    specs = list(tensor_specs(cfg))
    total = sum(2 * _numel(shape) for _, shape in specs)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if free < total:
        raise OSError(f"{out} has {free / 1e9:.1f} GB free; the checkpoint needs {total / 1e9:.1f} GB")
    shards = _plan_shards(specs)
    weight_map, index = {}, 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=out.name) as bar:
        for k, tensors in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_shard(out / fname, tensors, index, seed, cfg.initializer_range, bar)
            weight_map.update({name: fname for name, _ in tensors})
            index += len(tensors)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    cfg.save_pretrained(out)
    return out
