"""The native decode step seen from the model: every decoder layer for one new token per
sequence in one call into C++ (csrc/kernels/cpu/decode_step.cpp), with no Python and no torch
op between the kernels. MoEModel uses it for decode steps and the server's ragged batch for steps
where every sequence decodes; everything else (prompts, MLA, routers other than softmax top-k,
fp32 models, an on-device engine's expert cache) stays on the Python forward, which is also the
oracle this step is tested against.

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
from moeweave.models.moe_block import MoEBlock
from moeweave.ops._launch import capsules
from moeweave.quant.format import QuantizedWeight

_QK_NORMS = {None: 0, "head": 1, "full": 2}


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
    if spec.attention != "gqa" or spec.clip_qkv is not None or spec.qk_norm not in _QK_NORMS:
        return "the attention variant has no native step"
    for index, layer in enumerate(model.layers):
        weights = [layer.input_norm, layer.post_attention_norm, *_dense_weights(layer)]
        if not isinstance(layer.attention, AttentionWeights) or not all(map(_native_weight, weights)):
            return f"layer {index} holds weights the native step does not read"
        block = layer.mlp
        if isinstance(block, MoEBlock):
            if spec.router != "softmax" or type(block.experts) is not FusedExperts:
                return f"layer {index}: only softmax routers over in-memory experts run natively"
            if block.experts.tables[index].device.type != "cpu":
                return f"layer {index}: the experts are not on the CPU"
    return None


def _dense_weights(layer) -> list:
    attention, block = layer.attention, layer.mlp
    weights = [
        getattr(attention, name, None)
        for name in ("q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias", "q_norm", "k_norm")
    ]
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


def _projection(w, bias: torch.Tensor | None = None) -> tuple:
    """(packed, scales, zeros, n, k, bits, group_size, bias) as the binding takes a projection."""
    bias_capsule = None if bias is None else capsules(bias)[0]
    if isinstance(w, QuantizedWeight):
        zeros = None if w.zeros is None else capsules(w.zeros)[0]
        return (*capsules(w.packed, w.scales), zeros, w.n, w.k, w.bits, w.group_size, bias_capsule)
    return (capsules(w)[0], None, None, w.shape[0], w.shape[1], 16, 0, bias_capsule)


def _vector(w: torch.Tensor | None):
    return None if w is None else capsules(w)[0]


def layer_fields(index: int, layer) -> dict:
    """One layer as the binding takes it: capsules of its weights and their format fields."""
    a = layer.attention
    fields = dict(
        input_norm=_vector(layer.input_norm),
        post_attention_norm=_vector(layer.post_attention_norm),
        q=_projection(a.q, a.q_bias),
        k=_projection(a.k, a.k_bias),
        v=_projection(a.v, a.v_bias),
        o=_projection(a.o, a.o_bias),
        q_norm=_vector(a.q_norm),
        k_norm=_vector(a.k_norm),
    )
    block = layer.mlp
    mlp: MLPWeights | None = block.shared if isinstance(block, MoEBlock) else block
    if mlp is not None:
        fields.update(gate=_projection(mlp.gate), up=_projection(mlp.up), down=_projection(mlp.down))
    if isinstance(block, MoEBlock):
        fields.update(
            router=_projection(block.router),
            expert_table=capsules(block.experts.tables[index].table)[0],
            remap=_vector(block.remap),
            shared_gate=None if block.shared_gate is None else _projection(block.shared_gate),
            sigmoid=_vector(_sigmoid_table()),
        )
    return fields


class NativeDecoder:
    """The C++ stack for one model, built from its weights as they are now (routing_state)."""

    def __init__(self, model):
        spec = model.spec
        self.state = routing_state(model)
        self.model = model  # keeps every weight the stack points into alive
        self.layers = len(model.layers)
        self.kv_heads, self.head_dim = spec.num_kv_heads, spec.head_dim
        self.stack = _native.module_for("cpu").DecodeStack(
            spec.hidden_size,
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            spec.top_k,
            spec.norm_topk_prob,
            _QK_NORMS[spec.qk_norm],
            spec.rms_norm_eps,
            [layer_fields(index, layer) for index, layer in enumerate(model.layers)],
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
        """The cache's buffer addresses [B, L, 2] and capacity, with room for one more token.
        Every layer of a cache grows in step with the others, so the first layer tells."""
        while len(cache.layers) < self.layers:
            cache.layers.append(LayerCache(cache.capacity))
        shapes = [(rows, self.kv_heads, self.head_dim)] * 2
        for layer in cache.layers:
            layer.make_room(shapes, like, 1)
        first = cache.layers[0].buffers[0]
        key = (first.data_ptr(), first.shape[2])
        if cache.addresses is None or cache.addresses[0] != key:
            table = torch.tensor(
                [
                    [
                        [b.data_ptr() + row * b.stride(0) * b.element_size() for b in layer.buffers]
                        for layer in cache.layers
                    ]
                    for row in range(rows)
                ],
                dtype=torch.int64,
            )
            cache.addresses = (key, table)
        return cache.addresses[1], key[1]
