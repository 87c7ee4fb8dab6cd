"""The aggregation weights of Fakoor et al. as a torch module. Base predictions ghat [N, P, Q]
become g [N, Q] through softmax weights, so each level's combination is a convex one:
  coarse  g(x; tau) = sum_j w_j ghat_j(x; tau)                 weights [P]
  medium  g(x; tau) = sum_j w_{j tau} ghat_j(x; tau)           weights [Q, P]
  fine    g(x; tau) = sum_{j, nu} w^tau_{j nu} ghat_j(x; nu)   weights [Q, P, Q]
Global weights are free logits. Local weights (DQA) are logits computed from x by an MLP trunk
and a linear head, a gate over quantile experts: w(x) = softmax(W f_theta(x)).

Every variant starts at the simple average of the base models (fine: of the base models at the
same level, with 1 % of the mass spread over the other levels), so training can only move away
from the usual baseline when the data asks for it.

Dimension legend: N samples, P base models, Q quantile levels, D features.
"""

import math

import torch

from moeweave.aggregate.mlp import make_mlp

GRANULARITIES = ("coarse", "medium", "fine")
_FINE_OFF_LEVEL_MASS = 0.01


def initial_logits(granularity: str, models: int, levels: int) -> torch.Tensor:
    """Logits of the starting weights: coarse [P], medium [Q, P], fine [Q, P * Q] (column j * Q + nu)."""
    if granularity == "coarse":
        return torch.zeros(models)
    if granularity == "medium":
        return torch.zeros(levels, models)
    if granularity == "fine":
        logits = torch.zeros(levels, models, levels)  # [tau, j, nu]
        if levels > 1:
            off = math.log(_FINE_OFF_LEVEL_MASS / ((1 - _FINE_OFF_LEVEL_MASS) * (levels - 1)))
            same_level = torch.eye(levels, dtype=torch.bool)[:, None, :].expand_as(logits)
            logits = logits.masked_fill(~same_level, off)
        return logits.reshape(levels, models * levels)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


class Combiner(torch.nn.Module):
    def __init__(
        self, granularity: str, models: int, levels: int, local_features: int | None, hidden_sizes=()
    ):
        super().__init__()
        self.granularity = granularity
        self.models, self.levels = models, levels
        start = initial_logits(granularity, models, levels)
        self.shape = tuple(start.shape)
        if local_features is None:
            self.logits = torch.nn.Parameter(start)
        else:
            self.trunk, width = make_mlp(local_features, hidden_sizes)
            self.head = torch.nn.Linear(width, start.numel())
            # Zero weights: every x starts at the same (average) weights; the bias carries them.
            torch.nn.init.zeros_(self.head.weight)
            with torch.no_grad():
                self.head.bias.copy_(start.flatten())

    @property
    def local(self) -> bool:
        return not hasattr(self, "logits")

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax weights [N, *shape] for features x [N, D] (global weights broadcast)."""
        if self.local:
            logits = self.head(self.trunk(x)).reshape(x.shape[0], *self.shape)
        else:
            logits = self.logits.expand(x.shape[0], *self.shape)
        return torch.softmax(logits, dim=-1)

    def forward(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """base [N, P, Q], x [N, D] -> g [N, Q]."""
        w = self.weights(x)
        if self.granularity == "coarse":
            return torch.einsum("np,npq->nq", w, base)  # w [N, P]
        if self.granularity == "medium":
            return torch.einsum("nqp,npq->nq", w, base)  # w [N, Q, P]
        return torch.einsum("nqs,ns->nq", w, base.flatten(1))  # w [N, Q, P * Q]
