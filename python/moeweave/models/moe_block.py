"""The staged MoE block: router -> optional reroute -> expert compute (a provider) -> combine,
plus an optional shared expert. Each stage is a small replaceable piece.

Dimension legend: T tokens, E routed experts, K experts per token, H hidden size.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moeweave.models.experts import ExpertProvider
from moeweave.models.layers import MLPWeights, gated_mlp
from moeweave.models.spec import ModelSpec


def softmax_topk(logits: torch.Tensor, top_k: int, normalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts (fp32), top-k, optionally renormalised to sum 1.
    logits [T, E] -> ids [T, K] int64, weights [T, K] in logits' dtype."""
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if normalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return ids, weights.to(logits.dtype)


@dataclass
class MoEBlock:
    spec: ModelSpec
    layer: int
    router: torch.Tensor  # [E, H]
    experts: ExpertProvider
    shared: MLPWeights | None = None
    shared_gate: torch.Tensor | None = None  # [1, H]
    # Maps base expert ids to the slots the provider should use (e.g. an adapter's experts);
    # topk_ids [T, K] -> [T, K]. None = the base experts.
    reroute: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> [T, H]."""
        ids, weights = softmax_topk(F.linear(x, self.router), self.spec.top_k, self.spec.norm_topk_prob)
        if self.reroute is not None:
            ids = self.reroute(ids)
        y = self.experts(self.layer, x, ids, weights)
        if self.shared is not None:
            shared = gated_mlp(self.shared, x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(F.linear(x, self.shared_gate)) * shared
            y = y + shared
        return y
