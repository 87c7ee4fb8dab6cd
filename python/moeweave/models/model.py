"""A decoder-only MoE language model run on moeweave's own forward: embeddings, decoder layers
(attention + MoE block or dense MLP), final norm and LM head, with a KV cache for incremental
decoding. Built by moeweave.models.load from a Hugging Face checkpoint.

Dimension legend: B batch, S new tokens, T cached + new tokens, H hidden, V vocabulary.
"""

from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass

import torch
import torch.nn.functional as F

from moeweave.models.expert_parallel import ExpertParallel
from moeweave.models.kv_cache import KVCache, LayerCache
from moeweave.models.layers import AttentionWeights, MLPWeights, RopeTable, attention, gated_mlp, rms_norm
from moeweave.models.linear import linear
from moeweave.models.mla import MLAWeights, mla_attention
from moeweave.models.moe_block import MoEBlock
from moeweave.models.native_decode import NativeDecoder, routing_state, unsupported
from moeweave.models.spec import ModelSpec
from moeweave.quant.format import QuantizedWeight


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor  # [H]
    attention: AttentionWeights | MLAWeights
    post_attention_norm: torch.Tensor  # [H]
    mlp: MoEBlock | MLPWeights


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, S, V] fp32
    cache: KVCache | None


class MoEModel:
    def __init__(self, spec: ModelSpec, embed: torch.Tensor, layers: list[DecoderLayer], norm: torch.Tensor,
                 lm_head: torch.Tensor, tokenizer=None):  # fmt: skip
        self.spec = spec
        self.embed = embed  # [V, H]
        self.layers = layers
        self.norm = norm  # [H]
        self.lm_head = lm_head  # [V, H]
        self.tokenizer = tokenizer
        self.dtype = embed.dtype
        self.eos_token_id: int | list[int] | None = None
        self.rope = RopeTable(spec.rope_dim, spec.rope_theta, embed.dtype, spec.rope_scaling)
        # Decode steps run every layer in one native call where the model allows it
        # (moeweave.models.native_decode); False keeps them on the Python forward.
        self.use_native_decode = True
        self._native: tuple[tuple[int, ...], NativeDecoder | None] | None = None

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        adapters: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids [B, S]; attention_mask [B, S] for these tokens (1 = real, 0 = left padding);
        cache from a previous call continues the same sequences. Returns fp32 logits [B, S, V] and
        the extended cache (when one was passed). logits_to_keep = n > 0 computes logits for the
        last n positions only ([B, n, V]), as transformers does: a prompt's LM head over every
        position costs S x V x H multiply-adds that generation never reads. adapters [B] int32:
        each sequence's adapter id in the model's moeweave.adapters.AdapterSet (-1: the base)."""
        batch, seq = input_ids.shape
        past = cache.length if cache is not None else 0
        new_mask = (
            torch.ones(batch, seq, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        full_mask = (
            new_mask if cache is None or cache.mask is None else torch.cat([cache.mask, new_mask], dim=1)
        )
        if cache is not None:
            cache.mask = full_mask
            while len(cache.layers) < len(self.layers):
                cache.layers.append(LayerCache(cache.capacity))
        tok_adapter = None if adapters is None else adapters.to(torch.int32).repeat_interleave(seq)  # [B * S]
        h = F.embedding(input_ids, self.embed)  # [B, S, H]
        decoder = self.native_decoder() if seq == 1 and cache is not None else None
        if decoder is not None:
            decoder.step(
                h.view(batch, -1), [(cache, batch)], torch.full((batch,), past), full_mask, tok_adapter
            )
        else:
            h = self._python_layers(h, past, full_mask, cache, tok_adapter)
        # fp32 logits: the LM head accumulates in fp32, and sampling wants that precision.
        h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        logits = linear(rms_norm(h, self.norm, self.spec.rms_norm_eps).float(), self.lm_head)
        return CausalLMOutput(logits=logits, cache=cache)

    def _python_layers(self, h, past: int, full_mask, cache: KVCache | None, tok_adapter) -> torch.Tensor:
        """Every layer on h [B, S, H] in Python (prompts, and decode steps the native step does
        not cover); full_mask [B, T] of the cached and new tokens. Returns the new h."""
        batch, seq = h.shape[:2]
        # Causal and padding mask [B, 1, S, T]; a query may always see itself, so rows of
        # padding never become all-masked (their outputs are ignored).
        positions = torch.arange(past, past + seq)
        causal = torch.arange(past + seq)[None, :] <= positions[:, None]  # [S, T]
        mask = (causal[None] & full_mask[:, None, :]) | (
            torch.arange(past + seq)[None, :] == positions[:, None]
        )
        mask = mask[:, None]
        cos, sin = self.rope(past, seq)
        eps = self.spec.rms_norm_eps
        for index, layer in enumerate(self.layers):
            layer_cache = cache.layers[index] if cache is not None else None
            attend = mla_attention if isinstance(layer.attention, MLAWeights) else attention
            x = rms_norm(h, layer.input_norm, eps)
            h = h + attend(self.spec, layer.attention, x, cos, sin, mask, layer_cache)
            x = rms_norm(h, layer.post_attention_norm, eps)
            if isinstance(layer.mlp, MoEBlock):
                h = h + layer.mlp(x.reshape(batch * seq, -1), tok_adapter).view(batch, seq, -1)
            else:
                h = h + gated_mlp(layer.mlp, x)
        return h

    def native_decoder(self) -> NativeDecoder | None:
        """The native decode step for the model as it is now, or None where it cannot run."""
        if not self.use_native_decode:
            return None
        state = routing_state(self)
        if self._native is None or self._native[0] != state:
            self._native = (state, None if unsupported(self) else NativeDecoder(self))
        return self._native[1]

    def expert_parallel(self) -> ExpertParallel | None:
        """The provider that splits the experts across ranks (load(expert_parallel=...)), or None."""
        blocks = (layer.mlp for layer in self.layers if isinstance(layer.mlp, MoEBlock))
        return next((block.experts for block in blocks if isinstance(block.experts, ExpertParallel)), None)

    def serve_experts_until_all_done(self) -> None:
        """Under expert parallelism, a rank with no forward left to run serves its experts to the
        other ranks until every rank has called this (generation calls it at its end); a no-op
        otherwise."""
        if (provider := self.expert_parallel()) is not None:
            provider.serve_until_all_done()

    def dense_weights(self) -> list[torch.Tensor | QuantizedWeight]:
        """Every weight outside the routed experts and the token embedding, as held: norms,
        projections, routers, shared experts, the LM head."""
        return [self.norm, self.lm_head, *(w for layer in self.layers for w in _weights(layer))]

    def dense_bytes_per_token(self) -> int:
        """Bytes of weights a decode step reads outside the routed experts: every dense weight
        once, and one row of the token embedding."""
        row = self.spec.hidden_size * self.embed.element_size()
        return row + sum(w.nbytes for w in self.dense_weights())

    def generate(self, prompt, **kwargs):
        """See moeweave.models.generate.generate."""
        from moeweave.models.generate import generate

        return generate(self, prompt, **kwargs)


# Fields of the layer dataclasses that hold no dense weight: the routed experts (their own
# provider), the model's spec and the adapters' remap table.
_NOT_WEIGHTS = ("experts", "spec", "remap")


def _weights(value) -> Iterator[torch.Tensor | QuantizedWeight]:
    """The tensors and packed weights in value, walking the layer dataclasses."""
    if isinstance(value, (torch.Tensor, QuantizedWeight)):
        yield value
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            if f.name not in _NOT_WEIGHTS:
                yield from _weights(getattr(value, f.name))
