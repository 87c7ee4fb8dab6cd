"""The staged MoE block: router -> optional reroute -> expert provider (which computes the routed
experts and sums them with their routing weights) -> plus an optional shared expert. Each stage is
a small replaceable piece.

Dimension legend: T tokens, E routed experts, K experts per token, H hidden size.
"""

from dataclasses import dataclass

import torch

from moeweave.models.experts import ExpertProvider
from moeweave.models.layers import MLPWeights, gated_mlp
from moeweave.models.linear import linear
from moeweave.models.routing import deepseek_v2, deepseek_v3, softmax_topk
from moeweave.models.spec import ModelSpec
from moeweave.ops import reroute


@dataclass
class MoEBlock:
    spec: ModelSpec
    layer: int
    router: torch.Tensor  # [E, H]
    experts: ExpertProvider
    shared: MLPWeights | None = None
    shared_gate: torch.Tensor | None = None  # [1, H]
    correction_bias: torch.Tensor | None = None  # [E] fp32 (DeepSeek-V3)
    # Each adapter's expert slots (moeweave.adapters.AdapterSet): remap[a + 1, e] is the slot
    # that base expert e becomes for a token of adapter a (row 0: the base). None: no adapters.
    remap: torch.Tensor | None = None  # [A + 1, E] int32

    def __call__(self, x: torch.Tensor, tok_adapter: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, H] -> [T, H]; tok_adapter [T]: each token's adapter id (-1: the base)."""
        ids, weights = self.route(x)
        if tok_adapter is not None:
            if self.remap is None:
                raise ValueError("MoEBlock: adapter ids given, but no adapters are loaded (AdapterSet)")
            ids = reroute(ids.to(torch.int32), tok_adapter, self.remap)
        y = self.experts(self.layer, x, ids, weights)
        if self.shared is not None:
            shared = gated_mlp(self.shared, x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(linear(x, self.shared_gate)) * shared
            y = y + shared
        return y

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> expert ids [T, K], weights [T, K]."""
        if self.spec.router == "softmax":
            return softmax_topk(linear(x, self.router), self.spec.top_k, self.spec.norm_topk_prob)
        logits = linear(x.float(), self.router.float())  # DeepSeek routes in fp32
        if self.spec.router == "deepseek_v2":
            return deepseek_v2(logits, self.spec)
        return deepseek_v3(logits, self.spec, self.correction_bias)
