"""Which experts the next MoE layer will want, guessed while the current one computes, so their
reads overlap compute. A wrong guess costs only a wasted read: outputs never depend on it.

  none        nothing is predicted; every miss is a demand read (EdgeMoE's IO-EXP baseline)
  stale-gate  the next layer's router applied to the hidden state entering this layer
              (mixtral-offloading, HOBBIT): its top-k per token, most routing mass first
  path        EdgeMoE's path statistics: the next layer's experts given this layer's and the
              previous one's, profiled on calibration text (moeweave.engine.paths)

Dimension legend: T tokens, H hidden, E experts of a layer, K experts per token.
"""

from typing import Protocol

import torch

PREDICTORS = ("path", "stale-gate", "none")


class Predictor(Protocol):
    def __call__(self, position: int, x: torch.Tensor, topk_ids: torch.Tensor) -> list[int]:
        """Experts of MoE layer `position + 1`, most likely first, given MoE layer `position`'s
        input x [T, H] and its choice topk_ids [T, K]."""
        ...


class StaleGate:
    """routers[p]: MoE layer p's router weight [E, H]; top_k experts per token."""

    def __init__(self, routers: list[torch.Tensor], top_k: int):
        # fp32 copies: a [1, H] x [H, E] product in bf16 takes a CPU several times longer.
        self.routers, self.top_k = [router.float() for router in routers], top_k

    def __call__(self, position: int, x: torch.Tensor, topk_ids: torch.Tensor) -> list[int]:
        if position + 1 >= len(self.routers):
            return []
        router = self.routers[position + 1]
        probs = torch.softmax(x.float() @ router.t(), dim=-1)  # [T, E]
        top = probs.topk(self.top_k, dim=-1)  # [T, K]
        # Each guess weighs its routing probability summed over the tokens choosing it: with one
        # token the surest guesses come first, and those are the ones a short window can read.
        mass = torch.zeros(router.shape[0]).index_add_(0, top.indices.flatten(), top.values.flatten())  # [E]
        order = torch.argsort(mass, descending=True, stable=True)
        return order[: int((mass > 0).sum())].tolist()
