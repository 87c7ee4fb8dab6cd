"""One forward step over many sequences of different lengths and positions, each with its own KV
cache and adapter: the server's batch (continuous batching). The tokens of all sequences are
stacked into one [N, H] matrix, so every projection, the MoE layers (routed with each token's
adapter) and the LM head run once for the whole batch; only the attention core runs per
sequence, over that sequence's own cache (for DeepSeek's MLA, with the keys and values its
latents expand to). A sequence joining or leaving touches no other sequence's cache. A step in
which every sequence decodes one token runs all layers in one native call where the model
allows it (moeweave.models.native_decode).

Dimension legend: N tokens of the batch, S one sequence's new tokens, T its cached + new tokens,
H hidden, V vocabulary, nH heads, D head dim.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from moeweave.adapters import BASE
from moeweave.models.layers import AttentionWeights, gated_mlp, project_qkv, rms_norm, scaled_attention
from moeweave.models.linear import linear
from moeweave.models.mla import (
    ABSORB_QUERIES,
    absorbed_output,
    absorbed_query,
    attend_latents_batch,
    mla_cached_core,
    mla_project,
    mla_rotate,
)
from moeweave.models.model import KVCache, LayerCache
from moeweave.models.moe_block import MoEBlock
from moeweave.ops import rope as rope_op


@dataclass
class Chunk:
    """New tokens of one sequence; `cache` holds its past and is extended in place."""

    ids: list[int]
    cache: KVCache = field(default_factory=KVCache)
    adapter: int = BASE  # its adapter's id in the model's AdapterSet

    @property
    def past(self) -> int:
        return self.cache.length


@torch.inference_mode()
def forward_chunks(model, chunks: list[Chunk]) -> torch.Tensor:
    """Runs every chunk's new tokens; returns fp32 logits [len(chunks), V] at each chunk's last
    token. Each chunk's logits are those of the model run on that sequence alone."""
    if not chunks or any(not chunk.ids for chunk in chunks):
        raise ValueError("forward_chunks: every chunk needs at least one new token")
    lengths = [len(chunk.ids) for chunk in chunks]
    starts = [sum(lengths[:i]) for i in range(len(chunks))]
    ids = torch.tensor([token for chunk in chunks for token in chunk.ids])  # [N]
    positions = torch.cat([torch.arange(c.past, c.past + n) for c, n in zip(chunks, lengths, strict=True)])
    cos, sin = model.rope(0, int(positions.max()) + 1)
    cos, sin = cos[positions], sin[positions]  # [N, D]
    adapters = torch.tensor([chunk.adapter for chunk in chunks], dtype=torch.int32)
    tok_adapter = (
        None if bool((adapters == BASE).all()) else adapters.repeat_interleave(torch.tensor(lengths))
    )
    for chunk in chunks:
        while len(chunk.cache.layers) < len(model.layers):
            chunk.cache.layers.append(LayerCache(chunk.cache.capacity))
    spans = list(zip(starts, lengths, [c.past for c in chunks], strict=True))
    eps = model.spec.rms_norm_eps
    h = F.embedding(ids, model.embed)  # [N, H]
    decoder = model.native_decoder() if max(lengths) == 1 else None
    if decoder is not None:
        decoder.step(h, [(chunk.cache, 1) for chunk in chunks], positions, None, tok_adapter)
    else:
        for index, layer in enumerate(model.layers):
            caches = [chunk.cache.layers[index] for chunk in chunks]
            x = rms_norm(h, layer.input_norm, eps)
            if isinstance(layer.attention, AttentionWeights):
                h = h + _attention(model.spec, layer.attention, x, cos, sin, spans, caches)
            else:
                h = h + _mla(model.spec, layer.attention, x, cos, sin, spans, caches)
            x = rms_norm(h, layer.post_attention_norm, eps)
            mlp = layer.mlp
            h = h + (mlp(x, tok_adapter) if isinstance(mlp, MoEBlock) else gated_mlp(mlp, x))
    for chunk, n in zip(chunks, lengths, strict=True):
        chunk.cache.mask = torch.ones(1, chunk.past + n, dtype=torch.bool)
    last = torch.tensor([start + n - 1 for start, n in zip(starts, lengths, strict=True)])
    return linear(rms_norm(h[last], model.norm, eps).float(), model.lm_head)


def _causal_mask(past: int, new: int) -> torch.Tensor:
    """[1, 1, S, T]: a new token sees the past and the new tokens up to itself."""
    return (torch.arange(past + new)[None, :] <= torch.arange(past, past + new)[:, None])[None, None]


def _attention(spec, w: AttentionWeights, x, cos, sin, spans, caches) -> torch.Tensor:
    """x [N, H] -> [N, H]: projections for the whole batch, attention per sequence."""
    q, k, v = project_qkv(spec, w, x)  # [N, nH, D], [N, nKV, D] x 2
    q, k = rope_op(q[None], cos, sin)[0], rope_op(k[None], cos, sin)[0]
    out = torch.empty(x.shape[0], spec.num_heads * spec.head_dim, dtype=q.dtype)
    for (start, n, past), cache in zip(spans, caches, strict=True):
        rows = slice(start, start + n)
        keys, values = cache.extend(k[rows].transpose(0, 1)[None], v[rows].transpose(0, 1)[None])
        attended = scaled_attention(q[rows].transpose(0, 1)[None], keys, values, _causal_mask(past, n))
        out[rows] = attended[0].transpose(0, 1).reshape(n, -1)
    return linear(out, w.o, w.o_bias)


def _absorbed_spans(spec, w, query, spans, cached, out) -> None:
    """Writes out[rows] [n, nH * Dv] for the decoding sequences' rows: W_UK on all their queries,
    each sequence's attention over its cached latents, W_UV on all the results."""
    rows = torch.cat([torch.arange(start, start + n) for start, n, _ in spans])
    absorbed = absorbed_query(spec, w, query[:, :, rows])  # [1, nH, n, C + R]
    problems, offset = [], 0
    for (_, n, past), keys in zip(spans, cached, strict=True):
        problems.append((absorbed[:, :, offset : offset + n], keys, _causal_mask(past, n)))
        offset += n
    latents = torch.cat(attend_latents_batch(spec, problems), dim=2)  # [1, nH, n, C]
    out[rows] = absorbed_output(w, latents)[0].transpose(0, 1).reshape(len(rows), -1)


def _mla(spec, w, x, cos, sin, spans, caches) -> torch.Tensor:
    """x [N, H] -> [N, H]: DeepSeek's MLA. Projections for the whole batch; decode tokens have
    W_UK and W_UV applied for all of them at once (one read of each per layer) around each
    sequence's attention over its own cached latents; prompts attend in the expanded form."""
    q, latent, k_rot = mla_project(spec, w, x[None])
    query, keys = mla_rotate(spec, q, latent, k_rot, cos, sin)  # [1, nH, N, N + R], [1, 1, N, C + R]
    cached = [
        cache.extend(keys[:, :, start : start + n])[0]
        for (start, n, _), cache in zip(spans, caches, strict=True)
    ]
    out = torch.empty(x.shape[0], spec.num_heads * spec.v_head_dim, dtype=x.dtype)
    decoding = [i for i, (_, n, _) in enumerate(spans) if n <= ABSORB_QUERIES]
    if decoding:
        _absorbed_spans(spec, w, query, [spans[i] for i in decoding], [cached[i] for i in decoding], out)
    for (start, n, past), keys_i in zip(spans, cached, strict=True):
        if n > ABSORB_QUERIES:
            rows = slice(start, start + n)
            out[rows] = mla_cached_core(spec, w, query[:, :, rows], keys_i, _causal_mask(past, n))[0]
    return linear(out, w.o, w.o_bias)
