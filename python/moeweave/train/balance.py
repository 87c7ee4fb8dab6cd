"""Auxiliary-loss-free load balancing (ALF-LB; Wang et al. 2024, ../shared/SPEC.md §3) for
transformers' MoE models: a per-layer bias b [E] added to the router's scores only to choose the
top k experts; the gate weights that scale the experts' outputs stay the unbiased ones. After each
optimizer step the bias moves toward balance from the step's expert counts c (summed over
data-parallel ranks): b_i += u * sign(mean(c) - c_i) (rule "sign"), u * (mean(f) - f_i) with f the
counts as fractions ("linear"), or the sign rule with a step u / (1 + n / decay_steps) at the
n-th update ("decay").

    balancer = balance.attach(model, rule="sign", rate=1e-3)
    for batch in data:
        loss = model(**batch).loss; loss.backward(); optimizer.step(); optimizer.zero_grad()
        balancer.step()
    balancer.max_vio()                 # of the last step's batch
    balancer.max_vio(eval_batches)     # over an evaluation set
    balancer.detach()                  # the original routing back

Routers: the softmax top-k routers of Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE and DeepSeek-V2's
(greedy or group-limited), whose forward the balancer replaces with a biased-selection one (bias on
the logits), and DeepSeek-V3's, whose `e_score_correction_bias` already is that bias: the
balancer counts its choices and updates the buffer, and transformers' own forward applies it.

Dimension legend: T tokens, E routed experts, K experts per token, H hidden.
"""

from collections.abc import Iterable

import torch
import torch.nn.functional as F

RULES = ("sign", "linear", "decay")

# Router classes (by name, as transformers defines them) whose forward computes softmax top-k
# weights: whether they always renormalise the chosen k, and whether their weights come back in
# the logits' dtype.
SOFTMAX_ROUTERS = {
    "MixtralTopKRouter": {"always_normalise": True, "cast": False},
    "Qwen2MoeTopKRouter": {"always_normalise": False, "cast": True},
    "Qwen3MoeTopKRouter": {"always_normalise": False, "cast": True},
    "OlmoeTopKRouter": {"always_normalise": False, "cast": True},
}
DEEPSEEK_V2 = "DeepseekV2TopkRouter"
DEEPSEEK_V3 = "DeepseekV3TopkRouter"
ROUTERS = (*SOFTMAX_ROUTERS, DEEPSEEK_V2, DEEPSEEK_V3)


def _softmax_forward(router, bias: torch.Tensor, always_normalise: bool, cast: bool):
    def forward(hidden_states):
        hidden_states = hidden_states.reshape(-1, router.hidden_dim)
        logits = F.linear(hidden_states, router.weight)  # [T, E]
        probs = F.softmax(logits, dtype=torch.float, dim=-1)
        with torch.no_grad():
            indices = torch.topk(logits.float() + bias, router.top_k, dim=-1).indices  # [T, K]
        weights = probs.gather(1, indices)
        if always_normalise or router.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(logits.dtype) if cast else weights, indices

    return forward


def _deepseek_v2_forward(router, bias: torch.Tensor):
    def forward(hidden_states):
        hidden_states = hidden_states.view(-1, router.hidden_dim)
        logits = F.linear(hidden_states.float(), router.weight.float())  # [T, E]
        scores = logits.softmax(dim=-1, dtype=torch.float32)
        with torch.no_grad():
            choice = logits + bias
            if router.topk_method == "group_limited_greedy":
                grouped = choice.view(
                    -1, router.num_group, router.num_experts // router.num_group
                )  # [T, G, E/G]
                kept = torch.topk(
                    grouped.max(dim=-1).values, router.topk_group, dim=-1
                ).indices  # [T, topk_group]
                mask = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter_(1, kept, True)
                choice = grouped.masked_fill(~mask[..., None], float("-inf")).view(-1, router.num_experts)
            indices = torch.topk(choice, router.top_k, dim=-1).indices  # [T, K]
        return logits, scores.gather(1, indices) * router.routed_scaling_factor, indices

    return forward


def _counting(forward, counts: torch.Tensor):
    def counted(hidden_states):
        logits, weights, indices = forward(hidden_states)
        with torch.no_grad():
            counts.add_(torch.bincount(indices.flatten(), minlength=counts.numel()).to(counts))
        return logits, weights, indices

    return counted


def routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's MoE routers of the kinds in ROUTERS, in module order. Raises ValueError when it
    has none, naming any router modules of other kinds."""
    found = [m for m in model.modules() if type(m).__name__ in ROUTERS]
    if not found:
        unknown = sorted(
            {type(m).__name__ for m in model.modules() if type(m).__name__.lower().endswith("router")}
        )
        detail = f" (routers of unsupported kinds: {', '.join(unknown)})" if unknown else ""
        raise ValueError(
            f"balance: {type(model).__name__} has no MoE router moeweave balances{detail}; supported: "
            f"{', '.join(ROUTERS)}"
        )
    return found


def max_vio(counts: torch.Tensor) -> float:
    """MaxVio averaged over layers: counts [L, E] -> mean over l of (max_i c_li - mean_i c_li) / mean_i c_li."""
    mean = counts.float().mean(dim=-1)
    return float(((counts.float().max(dim=-1).values - mean) / mean.clamp(min=1e-12)).mean())


class Balancer:
    """The biases and expert counts of every router of one model; see the module docstring."""

    def __init__(self, model: torch.nn.Module, rule: str, rate: float, decay_steps: int):
        if rule not in RULES:
            raise ValueError(f"balance: rule must be one of {RULES}, got {rule!r}")
        if not rate > 0:
            raise ValueError(f"balance: rate must be positive, got {rate}")
        if decay_steps < 1:
            raise ValueError(f"balance: decay_steps must be at least 1, got {decay_steps}")
        self.model, self.rule, self.rate, self.decay_steps = model, rule, rate, decay_steps
        self.routers = routers(model)
        device = self.routers[0].weight.device
        self.biases: list[torch.Tensor] = []
        self.counts = torch.zeros(
            len(self.routers), self.routers[0].num_experts, dtype=torch.float64, device=device
        )
        self.last_counts: torch.Tensor | None = None
        self.updates = 0
        self._saved_v3_biases: dict[int, torch.Tensor] = {}
        for index, router in enumerate(self.routers):
            self._attach(index, router)

    def _attach(self, index: int, router: torch.nn.Module) -> None:
        kind = type(router).__name__
        counts = self.counts[index]
        if kind == DEEPSEEK_V3:
            self._saved_v3_biases[index] = router.e_score_correction_bias.detach().clone()
            self.biases.append(router.e_score_correction_bias.data)
            router.forward = _counting(router.forward, counts)  # the class's own forward applies the bias
            return
        bias = torch.zeros(router.num_experts, dtype=torch.float32, device=router.weight.device)
        self.biases.append(bias)
        if kind == DEEPSEEK_V2:
            forward = _deepseek_v2_forward(router, bias)
        else:
            forward = _softmax_forward(router, bias, **SOFTMAX_ROUTERS[kind])
        router.forward = _counting(forward, counts)

    def step(self) -> None:
        """Move every bias by the counts gathered since the last step (all-reduced over the
        default process group when one exists), then start counting afresh."""
        counts = self.counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        if not counts.sum():
            raise RuntimeError("balance: step() before any forward pass routed a token")
        mean = counts.mean(dim=-1, keepdim=True)  # [L, 1]
        if self.rule == "linear":
            totals = counts.sum(dim=-1, keepdim=True)
            delta = self.rate * (mean - counts) / totals
        else:
            rate = self.rate / (1 + self.updates / self.decay_steps) if self.rule == "decay" else self.rate
            delta = rate * torch.sign(mean - counts)
        with torch.no_grad():
            for bias, change in zip(self.biases, delta, strict=True):
                bias += change.to(bias)
        self.last_counts = counts
        self.counts.zero_()
        self.updates += 1

    def max_vio(self, batches: Iterable | None = None) -> float:
        """MaxVio averaged over layers: of the last step's batch, or over `batches` (input_ids
        tensors or dicts of model keyword arguments), run without gradients and counted on their
        own (training counts are left as they were)."""
        if batches is None:
            if self.last_counts is None:
                raise RuntimeError("balance: max_vio() of the last batch needs a step() first")
            return max_vio(self.last_counts)
        pending = self.counts.clone()
        self.counts.zero_()
        try:
            with torch.no_grad():
                for batch in batches:
                    self.model(**batch) if isinstance(batch, dict) else self.model(batch)
            if not self.counts.sum():
                raise ValueError("balance: max_vio(batches) got no tokens")
            return max_vio(self.counts)
        finally:
            self.counts.copy_(pending)

    def detach(self) -> None:
        """Restore every router's original forward (and DeepSeek-V3's original bias)."""
        for index, router in enumerate(self.routers):
            del router.forward
            if index in self._saved_v3_biases:
                router.e_score_correction_bias.data.copy_(self._saved_v3_biases[index])
        self.routers = []


def attach(
    model: torch.nn.Module, rule: str = "sign", rate: float = 1e-3, decay_steps: int = 1000
) -> Balancer:
    """Start balancing every MoE router of a transformers model; see the module docstring."""
    return Balancer(model, rule, rate, decay_steps)
