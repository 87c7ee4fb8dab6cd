"""The native decode step seen from the model: every decoder layer for one new token per
sequence in one call into C++ (csrc/kernels/cpu/decode_step.cpp), with no Python and no torch
op between the kernels, for grouped-query attention and DeepSeek's MLA. MoEModel uses it for
decode steps and the server's ragged batch for steps where every sequence decodes; everything
else (prompts, routers other than softmax top-k and DeepSeek-V2's greedy one, fp32 models, an
on-device engine's expert cache) stays on the Python forward, which is also the oracle this step
is tested against.

The C++ stack keeps the addresses of the model's weights and reads each MoE layer's expert table
(and adapter remap) on every step, so experts swapped in place are seen; a table replaced by
another object (an AdapterSet being attached) makes the model build a new stack.

Dimension legend: N tokens of the step, B rows of one cache, L layers, H hidden, D head dim.
"""

import functools

import torch

from moeweave import _native
from moeweave.models.experts import FusedExperts
from moeweave.models.kv_cache import KVCache, LayerCache
from moeweave.models.layers import AttentionWeights, MLPWeights
from moeweave.models.mla import LATENT_NORM_EPS, MLAWeights, attention_scale
from moeweave.models.moe_block import MoEBlock
from moeweave.ops._launch import capsules
from moeweave.quant.format import QuantizedWeight

_QK_NORMS = {None: 0, "head": 1, "full": 2}
_ROUTERS = {"softmax": 0, "deepseek_v2": 1}
# The attention weights the stack reads, by variant.
_GQA_WEIGHTS = ("q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias", "q_norm", "k_norm")
_MLA_WEIGHTS = (
    "q",
    "q_a",
    "q_norm",
    "q_b",
    "kv_a",
    "kv_norm",
    "w_uk",
    "w_uv",
    "o",
    "q_a_bias",
    "kv_a_bias",
    "o_bias",
)


@functools.cache
def _sigmoid_table() -> torch.Tensor:
    """[65536] bf16: torch's sigmoid of every bf16 value, indexed by its bit pattern, so the
    native shared-expert gate rounds exactly as the Python forward does."""
    every_value = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return torch.sigmoid(every_value)


def routing_state(model) -> tuple[int, ...]:
    """Identities of what the stack reads through pointers that may be replaced: each MoE
    layer's expert provider, its table for the layer and its remap."""
    state = []
    for index, layer in enumerate(model.layers):
        if isinstance(layer.mlp, MoEBlock):
            tables = getattr(layer.mlp.experts, "tables", {})
            state += [id(layer.mlp.experts), id(tables.get(index)), id(layer.mlp.remap)]
    return tuple(state)


def unsupported(model) -> str | None:
    """Why the native step cannot run this model, or None when it can."""
    native = _native.module_for("cpu")
    spec = model.spec
    if native is None or not hasattr(native, "DecodeStack"):
        return "the native module is not built"
    if model.dtype != torch.bfloat16 or model.embed.device.type != "cpu":
        return "the model is not bf16 on the CPU"
    attention = MLAWeights if spec.attention == "mla" else AttentionWeights
    if spec.clip_qkv is not None or spec.qk_norm not in _QK_NORMS:
        return "the attention variant has no native step"
    if spec.attention == "mla" and not spec.rope_interleave:
        return "the attention variant has no native step (MLA with half-split RoPE)"
    for index, layer in enumerate(model.layers):
        weights = [layer.input_norm, layer.post_attention_norm, *_dense_weights(layer)]
        if not isinstance(layer.attention, attention) or not all(map(_native_weight, weights)):
            return f"layer {index} holds weights the native step does not read"
        block = layer.mlp
        if isinstance(block, MoEBlock):
            if (
                spec.router not in _ROUTERS
                or spec.topk_method != "greedy"
                or type(block.experts) is not FusedExperts
            ):
                return f"layer {index}: only softmax and greedy DeepSeek-V2 routers over in-memory experts run natively"
            if block.experts.tables[index].device.type != "cpu":
                return f"layer {index}: the experts are not on the CPU"
    return None


def _dense_weights(layer) -> list:
    attention, block = layer.attention, layer.mlp
    names = _MLA_WEIGHTS if isinstance(attention, MLAWeights) else _GQA_WEIGHTS
    weights = [getattr(attention, name, None) for name in names]
    mlp = block.shared if isinstance(block, MoEBlock) else block
    if mlp is not None:
        weights += [mlp.gate, mlp.up, mlp.down]
    if isinstance(block, MoEBlock):
        weights += [block.router, block.shared_gate]
    return [w for w in weights if w is not None]


def _native_weight(w) -> bool:
    if isinstance(w, QuantizedWeight):
        return w.packed.device.type == "cpu"
    return w.dtype == torch.bfloat16 and w.is_contiguous() and w.device.type == "cpu"


def _capsule(w: torch.Tensor | None):
    return None if w is None else capsules(w)[0]


def _projection(w, bias: torch.Tensor | None = None) -> tuple:
    """(packed, scales, zeros, n, k, bits, group_size, bias) as the binding takes a projection."""
    if isinstance(w, QuantizedWeight):
        weight = (*capsules(w.packed, w.scales), _capsule(w.zeros), w.n, w.k, w.bits, w.group_size)
    else:
        weight = (capsules(w)[0], None, None, w.shape[0], w.shape[1], 16, 0)
    return (*weight, _capsule(bias))


def layer_fields(index: int, layer) -> dict:
    """One layer as the binding takes it: capsules of its weights and their format fields."""
    a = layer.attention
    fields = dict(
        input_norm=_capsule(layer.input_norm), post_attention_norm=_capsule(layer.post_attention_norm)
    )
    if isinstance(a, MLAWeights):
        fields.update(
            q=None if a.q is None else _projection(a.q),
            q_a=None if a.q_a is None else _projection(a.q_a, a.q_a_bias),
            q_a_norm=_capsule(a.q_norm),
            q_b=None if a.q_b is None else _projection(a.q_b),
            kv_a=_projection(a.kv_a, a.kv_a_bias),
            kv_norm=_capsule(a.kv_norm),
            w_uk=_capsule(a.w_uk),
            w_uv=_capsule(a.w_uv),
            o=_projection(a.o, a.o_bias),
        )
    else:
        fields.update(
            q=_projection(a.q, a.q_bias),
            k=_projection(a.k, a.k_bias),
            v=_projection(a.v, a.v_bias),
            o=_projection(a.o, a.o_bias),
            q_norm=_capsule(a.q_norm),
            k_norm=_capsule(a.k_norm),
        )
    block = layer.mlp
    mlp: MLPWeights | None = block.shared if isinstance(block, MoEBlock) else block
    if mlp is not None:
        fields.update(gate=_projection(mlp.gate), up=_projection(mlp.up), down=_projection(mlp.down))
    if isinstance(block, MoEBlock):
        fields.update(
            router=_projection(block.router),
            expert_table=capsules(block.experts.tables[index].table)[0],
            remap=_capsule(block.remap),
            shared_gate=None if block.shared_gate is None else _projection(block.shared_gate),
            sigmoid=_capsule(_sigmoid_table()),
        )
    return fields


class NativeDecoder:
    """The C++ stack for one model, built from its weights as they are now (routing_state)."""

    def __init__(self, model):
        spec = model.spec
        self.state = routing_state(model)
        self.model = model  # keeps every weight the stack points into alive
        self.layers = len(model.layers)
        mla = None
        if spec.attention == "mla":
            # One cached row per token and layer: [latent | rotary key], one key head.
            self.cache_shapes = [(1, spec.kv_lora_rank + spec.qk_rope_head_dim)]
            kv_heads, head_dim = 1, spec.qk_rope_head_dim
            mla = dict(
                q_lora_rank=spec.q_lora_rank or 0,
                kv_lora_rank=spec.kv_lora_rank,
                nope=spec.qk_nope_head_dim,
                rope=spec.qk_rope_head_dim,
                v_head_dim=spec.v_head_dim,
                scale=attention_scale(spec),
                latent_eps=LATENT_NORM_EPS,
            )
        else:
            self.cache_shapes = [(spec.num_kv_heads, spec.head_dim)] * 2
            kv_heads, head_dim = spec.num_kv_heads, spec.head_dim
        self.stack = _native.module_for("cpu").DecodeStack(
            spec.hidden_size,
            spec.num_heads,
            kv_heads,
            head_dim,
            spec.top_k,
            spec.norm_topk_prob,
            _QK_NORMS[spec.qk_norm],
            spec.rms_norm_eps,
            [layer_fields(index, layer) for index, layer in enumerate(model.layers)],
            mla,
            _ROUTERS[spec.router],
            spec.routed_scaling_factor,
        )

    def step(
        self,
        hidden: torch.Tensor,
        caches: list[tuple[KVCache, int]],
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        adapters: torch.Tensor | None,
    ) -> None:
        """Runs every layer for hidden [N, H] (in place): the rows of the caches, in order, are
        the N tokens ((cache, B) for a cache of B rows); positions [N] their RoPE positions; mask
        [N, T] bool which cached positions each may see (None: all); adapters [N] int32 or None.
        Appends each token's keys and values to its cache."""
        addresses, lengths, capacities = [], [], []
        for cache, rows in caches:
            table, capacity = self._addresses(cache, rows, hidden)
            addresses.append(table)
            lengths += [cache.layers[0].length] * rows
            capacities += [capacity] * rows
        cos, sin = self.model.rope(0, int(positions.max()) + 1)
        self.stack.step(
            *capsules(
                hidden,
                positions.to(torch.int64),
                cos,
                sin,
                torch.cat(addresses),
                torch.tensor(lengths, dtype=torch.int64),
                torch.tensor(capacities, dtype=torch.int64),
            ),
            None if mask is None else capsules(mask.contiguous().view(torch.uint8))[0],
            None if adapters is None else capsules(adapters.to(torch.int32).contiguous())[0],
        )
        for cache, _ in caches:
            for layer in cache.layers:
                layer.length += 1

    def _addresses(self, cache: KVCache, rows: int, like: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The cache's buffer addresses [B, L, 2] (MLA: one buffer, the second address 0) and
        capacity, with room for one more token. Every layer of a cache grows in step with the
        others, so the first layer tells."""
        while len(cache.layers) < self.layers:
            cache.layers.append(LayerCache(cache.capacity))
        shapes = [(rows, heads, dim) for heads, dim in self.cache_shapes]
        for layer in cache.layers:
            layer.make_room(shapes, like, 1)
        first = cache.layers[0].buffers[0]
        key = (first.data_ptr(), first.shape[2])
        if cache.addresses is None or cache.addresses[0] != key:
            table = torch.tensor(
                [
                    [
                        [b.data_ptr() + row * b.stride(0) * b.element_size() for b in layer.buffers]
                        + [0] * (2 - len(layer.buffers))
                        for layer in cache.layers
                    ]
                    for row in range(rows)
                ],
                dtype=torch.int64,
            )
            cache.addresses = (key, table)
        return cache.addresses[1], key[1]
