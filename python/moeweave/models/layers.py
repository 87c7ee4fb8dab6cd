"""The dense building blocks of the supported decoder layers: RMSNorm, rotary embeddings,
grouped-query attention with a KV cache, and the gated MLP of dense layers and shared experts.

Dimension legend: B batch, S new tokens, T cached + new tokens, H hidden, nH / nKV heads, D head dim.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moeweave.models.linear import linear
from moeweave.models.rope import NO_SCALING, RopeScaling, frequencies
from moeweave.models.spec import ModelSpec
from moeweave.ops import attention as attention_op
from moeweave.ops import reference, silu_mul
from moeweave.ops import rms_norm as rms_norm_op
from moeweave.ops import rope as rope_op
from moeweave.quant.experts import Projection


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As transformers: normalise in fp32, cast back, then scale (moeweave's op when x and the
    weight share a dtype, which is how models are loaded)."""
    if weight.dtype == x.dtype:
        return rms_norm_op(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


class RopeTable:
    """cos, sin [S, D] of consecutive positions (the half-split layout of transformers), computed
    once per position and then sliced. Evaluating cos and sin every decode step would hand them to
    MKL's threaded VML, whose OpenMP threads then spin on the cores moeweave's pool computes on.
    A scaled RoPE (linear, YaRN) changes the frequencies and, for YaRN, scales cos and sin."""

    def __init__(self, head_dim: int, theta: float, dtype: torch.dtype, scaling: RopeScaling = NO_SCALING):
        self.inv_freq, self.attention_factor = frequencies(head_dim, theta, scaling)  # [D / 2], float
        self.dtype = dtype
        self.cos = self.sin = torch.empty(0, head_dim, dtype=dtype)

    def __call__(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for positions start .. start + count - 1; the table doubles when it runs out."""
        if start + count > self.cos.shape[0]:
            positions = torch.arange(max(2 * (start + count), 256))
            freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [P, D / 2]
            emb = torch.cat([freqs, freqs], dim=-1)
            self.cos = (emb.cos() * self.attention_factor).to(self.dtype)
            self.sin = (emb.sin() * self.attention_factor).to(self.dtype)
        return self.cos[start : start + count], self.sin[start : start + count]


def scaled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None = None
):
    """softmax(q k^T * scale + mask) v with grouped heads: q [B, nH, S, Dk], k [B, nKV, T, Dk],
    v [B, nKV, T, Dv], mask [B, 1, S, T] bool -> [B, nH, S, Dv].

    On CPU moeweave's attention op runs it over the cache views as they lie in memory: for a
    prompt, 1.1-11x torch's SDPA (its causal blocks skipped; bf16 pair products where the CPU has
    AVX512-BF16: docs/benchmarks.md); at a decode step torch's kernels cost milliseconds per
    call, on strided views and while their OpenMP threads compete with moeweave's pool for the
    cores. A prompt that autograd records stays on SDPA: the op's backward is plain torch over
    the whole [S, T] score matrix."""
    recorded = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.is_cpu and (q.shape[2] <= 8 or not recorded):
        return attention_op(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


@dataclass
class AttentionWeights:
    q: Projection  # [nH * D, H]
    k: Projection  # [nKV * D, H]
    v: Projection  # [nKV * D, H]
    o: Projection  # [H, nH * D]
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None  # [D] (per head) or [nH * D] (full)
    k_norm: torch.Tensor | None = None


def attention(
    spec: ModelSpec,
    w: AttentionWeights,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    cache,
) -> torch.Tensor:
    """x [B, S, H] -> [B, S, H]. mask [B, 1, S, T] bool (True = may attend). `cache` is this
    layer's LayerCache of keys and values ([B, nKV, T, D]), extended with this call's."""
    batch, seq, _ = x.shape
    q, k, v = project_qkv(spec, w, x)
    q = rope_op(q, cos, sin).transpose(1, 2)  # [B, nH, S, D]
    k = rope_op(k, cos, sin).transpose(1, 2)  # [B, nKV, S, D]
    v = v.transpose(1, 2)
    if cache is not None:
        k, v = cache.extend(k, v)
    out = scaled_attention(q, k, v, mask)
    return linear(out.transpose(1, 2).reshape(batch, seq, -1), w.o, w.o_bias)


def project_qkv(
    spec: ModelSpec, w: AttentionWeights, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., H] -> q [..., nH, D], k and v [..., nKV, D]: the projections with their biases,
    QK-norms and clipping, before RoPE."""
    heads, kv_heads, dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
    q, k, v = linear(x, w.q, w.q_bias), linear(x, w.k, w.k_bias), linear(x, w.v, w.v_bias)
    if spec.qk_norm == "full":
        q, k = rms_norm(q, w.q_norm, spec.rms_norm_eps), rms_norm(k, w.k_norm, spec.rms_norm_eps)
    if spec.clip_qkv is not None:
        q, k, v = (t.clamp(-spec.clip_qkv, spec.clip_qkv) for t in (q, k, v))
    lead = x.shape[:-1]
    q, k, v = q.view(*lead, heads, dim), k.view(*lead, kv_heads, dim), v.view(*lead, kv_heads, dim)
    if spec.qk_norm == "head":
        q, k = rms_norm(q, w.q_norm, spec.rms_norm_eps), rms_norm(k, w.k_norm, spec.rms_norm_eps)
    return q, k, v


@dataclass
class MLPWeights:
    gate: Projection  # [I, H]
    up: Projection  # [I, H]
    down: Projection  # [H, I]


def gated_mlp(w: MLPWeights, x: torch.Tensor) -> torch.Tensor:
    """down(silu(gate x) * up x); x [..., H] -> [..., H]."""
    return linear(silu_mul(linear(x, w.gate), linear(x, w.up)), w.down)
