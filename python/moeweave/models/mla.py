"""Multi-head latent attention (DeepSeek-V2/V3). Keys and values are compressed into one
latent per token (kv_lora_rank) plus a shared rotary key (qk_rope_head_dim); the cache holds
only those, one row [latent | rotary key] per token. kv_b_proj is held per head as W_UK and
W_UV (DeepSeek's names). A prompt expands the cached latents into keys and values per head and
attends as usual. A decode step (up to ABSORB_QUERIES new tokens) instead folds W_UK into the
query and W_UV into the output, as DeepSeek's inference code does: it attends over the latents
themselves, one shared key/value head, so the cache is never expanded (expanding it cost
nH * (N + Dv) * C multiply-adds per cached token and layer, every step).

Dimension legend: B batch, S new tokens, T cached + new tokens, nH heads, C kv_lora_rank,
R qk_rope_head_dim, N qk_nope_head_dim, Dv v_head_dim.
"""

from dataclasses import dataclass

import torch

from moeweave.models.layers import Projection, rms_norm, scaled_attention
from moeweave.models.linear import linear
from moeweave.models.rope import mla_softmax_scale
from moeweave.models.spec import ModelSpec
from moeweave.ops import rope as rope_op
from moeweave.ops.attention import attention_batch

# The latent norms (q_a_layernorm, kv_a_layernorm) use RMSNorm's default epsilon, not
# rms_norm_eps: DeepSeek's reference code and transformers both construct them without it.
LATENT_NORM_EPS = 1e-6
# Up to this many new tokens per sequence, attention runs on the latents with kv_b absorbed; the
# absorbed form costs nH * N * C per new token, the expanded one nH * (N + Dv) * C per cached one.
ABSORB_QUERIES = 8


@dataclass
class MLAWeights:
    kv_a: Projection  # [C + R, H]
    kv_norm: torch.Tensor  # [C]
    w_uk: torch.Tensor  # [nH, N, C]: kv_b_proj's key rows, per head
    w_uv: torch.Tensor  # [nH, C, Dv]: kv_b_proj's value rows, per head, transposed
    o: Projection  # [H, nH * Dv]
    q: Projection | None = None  # [nH * (N + R), H] when q_lora_rank is None
    q_a: Projection | None = None  # [q_lora_rank, H]
    q_norm: torch.Tensor | None = None  # [q_lora_rank]
    q_b: Projection | None = None  # [nH * (N + R), q_lora_rank]
    q_a_bias: torch.Tensor | None = None
    kv_a_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None


def rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved pairs (x0, x1), (x2, x3), ... as DeepSeek lays them out.
    x [B, heads, S, R]; cos, sin [S, R] (half-split tables: the first R/2 columns are used).
    The output keeps the pairs interleaved; q and k get the same layout, so scores match the
    de-interleaved form transformers uses for V3."""
    half = x.shape[-1] // 2
    cos, sin = cos[:, :half], sin[:, :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)


def rope_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """moeweave::rope on x [B, heads, S, R] (the op takes [B, S, heads, R])."""
    return rope_op(x.transpose(1, 2), cos, sin).transpose(1, 2)


def mla_attention(
    spec: ModelSpec,
    w: MLAWeights,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    cache,
) -> torch.Tensor:
    """x [B, S, H] -> [B, S, H]; cos, sin [S, R]; mask [B, 1, S, T]; cache: a LayerCache of the
    latent [B, 1, T, C] and the rotary key [B, 1, T, R], extended with this call's."""
    q, latent, k_rot = mla_project(spec, w, x)
    return linear(mla_attend(spec, w, q, latent, k_rot, cos, sin, mask, cache), w.o, w.o_bias)


def mla_project(
    spec: ModelSpec, w: MLAWeights, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, S, H] -> the queries [B, S, nH, N + R], the normalised latent [B, S, C] and the
    rotary key [B, S, R], before RoPE: the per-token projections, which a batch can share."""
    batch, seq, _ = x.shape
    heads, nope, rope = spec.num_heads, spec.qk_nope_head_dim, spec.qk_rope_head_dim
    if w.q is not None:
        q = linear(x, w.q)
    else:
        q = linear(rms_norm(linear(x, w.q_a, w.q_a_bias), w.q_norm, LATENT_NORM_EPS), w.q_b)
    latent, k_rot = linear(x, w.kv_a, w.kv_a_bias).split([spec.kv_lora_rank, rope], dim=-1)
    return q.view(batch, seq, heads, nope + rope), rms_norm(latent, w.kv_norm, LATENT_NORM_EPS), k_rot


def mla_attend(
    spec: ModelSpec,
    w: MLAWeights,
    q: torch.Tensor,
    latent: torch.Tensor,
    k_rot: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    cache,
) -> torch.Tensor:
    """mla_project's outputs of one batch of sequences -> the attention output [B, S, nH * Dv],
    before the output projection: RoPE, the cache, attention over the cached latents."""
    query, keys = mla_rotate(spec, q, latent, k_rot, cos, sin)
    if cache is not None:
        (keys,) = cache.extend(keys)
    return mla_cached_core(spec, w, query, keys, mask)


def mla_cached_core(
    spec: ModelSpec, w: MLAWeights, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
):
    """query [B, nH, S, N + R] (after RoPE), keys [B, 1, T, C + R] (latents and rotary keys, as
    cached), mask [B, 1, S, T] -> [B, S, nH * Dv]: absorbed for a few queries, expanded else."""
    batch, seq = query.shape[0], query.shape[2]
    if seq <= ABSORB_QUERIES:
        out = absorbed_output(w, attend_latents(spec, absorbed_query(spec, w, query), keys, mask))
        return out.transpose(1, 2).reshape(batch, seq, -1)
    latent, k_rot = keys.split([spec.kv_lora_rank, spec.qk_rope_head_dim], dim=-1)  # [B, 1, T, .]
    k_pass = torch.matmul(latent, w.w_uk.transpose(1, 2))  # [B, nH, T, N]
    return mla_core(spec, query, k_pass, torch.matmul(latent, w.w_uv), k_rot, mask)


def absorbed_query(spec: ModelSpec, w: MLAWeights, query: torch.Tensor) -> torch.Tensor:
    """query [B, nH, S, N + R] -> [B, nH, S, C + R]: q_nope . (W_UK latent) = (q_nope W_UK) . latent,
    so the query meets the cached rows [latent | rotary key] directly."""
    q_pass, q_rot = query.split([spec.qk_nope_head_dim, spec.qk_rope_head_dim], dim=-1)
    return torch.cat([torch.matmul(q_pass, w.w_uk), q_rot], dim=-1)


def attend_latents(
    spec: ModelSpec, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """absorbed_query's [B, nH, S, C + R] over the cached rows keys [B, 1, T, C + R] (one key head
    for all query heads; the values are the latents) -> [B, nH, S, C]."""
    return scaled_attention(query, keys, keys[..., : spec.kv_lora_rank], mask, attention_scale(spec))


def attend_latents_batch(
    spec: ModelSpec, problems: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """attend_latents of many sequences, each (query, keys, mask) over its own cache, in one
    native call (moeweave.ops.attention_batch)."""
    latent = spec.kv_lora_rank
    return attention_batch(
        [(query, keys, keys[..., :latent], mask) for query, keys, mask in problems], attention_scale(spec)
    )


def attention_scale(spec: ModelSpec) -> float:
    """The softmax scale of MLA's scores: over the query's whole head (N + R), with mscale."""
    return mla_softmax_scale(spec.qk_nope_head_dim + spec.qk_rope_head_dim, spec.rope_scaling)


def absorbed_output(w: MLAWeights, out: torch.Tensor) -> torch.Tensor:
    """attend_latents' [B, nH, S, C] -> the values' weighted sums [B, nH, S, Dv] (W_UV applied)."""
    return torch.matmul(out, w.w_uv)


def mla_rotate(
    spec: ModelSpec,
    q: torch.Tensor,
    latent: torch.Tensor,
    k_rot: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, S, nH, N + R], latent [B, S, C], k_rot [B, S, R] -> the query [B, nH, S, N + R] and
    the rows the cache holds [B, 1, S, C + R] (the latent, then the rotary key), RoPE applied."""
    batch, seq = q.shape[:2]
    nope, rope = spec.qk_nope_head_dim, spec.qk_rope_head_dim
    q_pass, q_rot = q.transpose(1, 2).split([nope, rope], dim=-1)  # [B, nH, S, N], [B, nH, S, R]
    rotate = rope_pairs if spec.rope_interleave else rope_half_split
    q_rot, k_rot = rotate(q_rot, cos, sin), rotate(k_rot.reshape(batch, 1, seq, rope), cos, sin)
    keys = torch.cat([latent.reshape(batch, 1, seq, -1), k_rot], dim=-1)
    return torch.cat([q_pass, q_rot], dim=-1), keys


def mla_core(
    spec: ModelSpec,
    query: torch.Tensor,
    k_pass: torch.Tensor,
    v: torch.Tensor,
    k_rot: torch.Tensor,
    mask: torch.Tensor,
):
    """query [B, nH, S, N + R], k_pass [B, nH, T, N] and v [B, nH, T, Dv] (the latents expanded
    per head), k_rot [B, 1, T, R] -> [B, S, nH * Dv]."""
    batch, heads, seq = query.shape[:3]
    k = torch.cat([k_pass, k_rot.expand(-1, heads, -1, -1)], dim=-1)
    out = scaled_attention(query, k, v, mask, scale=attention_scale(spec))
    return out.transpose(1, 2).reshape(batch, seq, -1)
