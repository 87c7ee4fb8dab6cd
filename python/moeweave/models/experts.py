"""Expert providers: where the routed-expert stage of an MoE layer gets its experts. The model
asks a provider for y = sum_k w[t, k] * expert_{ids[t, k]}(x_t) per layer and never sees how the
experts are stored, so an on-device expert cache or a server's adapter pool plugs in here
without touching model code.

Dimension legend: T tokens, K experts per token, H hidden, I expert intermediate size.
"""

from typing import Protocol

import torch
import torch.nn.functional as F

from moeweave.ops import moe_experts
from moeweave.quant import ExpertTable


class ExpertProvider(Protocol):
    def __call__(
        self, layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """x [T, H], topk_ids [T, K] (int), topk_weights [T, K] -> [T, H] in x's dtype."""
        ...


class TorchExperts:
    """Experts as plain fp32/bf16 tensors, computed with torch (one matmul chain per used
    expert): exact, and the path for full-precision parity with transformers."""

    def __init__(self, layers: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]):
        self.layers = layers  # layer -> [(gate [I, H], up [I, H], down [H, I]) per expert]

    def __call__(self, layer, x, topk_ids, topk_weights):
        y = torch.zeros_like(x)  # [T, H]
        for e in topk_ids.unique().tolist():
            token, slot = (topk_ids == e).nonzero(as_tuple=True)
            gate, up, down = self.layers[layer][e]
            xe = x[token]
            out = F.linear(F.silu(F.linear(xe, gate)) * F.linear(xe, up), down)
            y.index_add_(0, token, out * topk_weights[token, slot, None].to(x.dtype))
        return y


class FusedExperts:
    """Experts behind moeweave's fused MoE op (bf16 or quantised, any mix), one ExpertTable per
    layer: a single native call per layer, no Python loop over experts."""

    def __init__(self, tables: dict[int, ExpertTable]):
        self.tables = tables

    def __call__(self, layer, x, topk_ids, topk_weights):
        return moe_experts(x, topk_ids.to(torch.int32), topk_weights.float(), self.tables[layer])
