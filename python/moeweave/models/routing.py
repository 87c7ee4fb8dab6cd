"""Routers: router logits -> (expert ids [T, K], weights [T, K]) as each architecture defines
them (transformers' implementations are the reference).

Dimension legend: T tokens, E routed experts, K experts per token, G expert groups.
"""

import torch
import torch.nn.functional as F

from moeweave.models.spec import ModelSpec


def softmax_topk(logits: torch.Tensor, top_k: int, normalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts (fp32), top-k, optionally renormalised to sum 1 (Mixtral, Qwen,
    OLMoE). logits [T, E] -> ids [T, K] int64, weights [T, K] in logits' dtype."""
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if normalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return ids, weights.to(logits.dtype)


def _group_mask(scores: torch.Tensor, spec: ModelSpec, group_score) -> torch.Tensor:
    """Bool [T, E]: experts in the topk_group best groups, a group scored by group_score([T, G, E/G])."""
    tokens, experts = scores.shape
    grouped = scores.view(tokens, spec.n_group, experts // spec.n_group)
    best = torch.topk(group_score(grouped), spec.topk_group, dim=-1).indices  # [T, topk_group]
    keep = torch.zeros(tokens, spec.n_group, dtype=torch.bool).scatter_(1, best, True)
    return keep.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts)


def deepseek_v2(logits: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax; greedy top-k, or top-k within the best groups (a group scored by its max)."""
    scores = F.softmax(logits.float(), dim=-1)
    if spec.topk_method == "group_limited_greedy":
        scores = scores.masked_fill(~_group_mask(scores, spec, lambda g: g.amax(-1)), 0.0)
    weights, ids = torch.topk(scores, spec.top_k, dim=-1)
    return ids, weights * spec.routed_scaling_factor


def deepseek_v3(
    logits: torch.Tensor, spec: ModelSpec, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores; the correction bias only chooses (auxiliary-loss-free balancing): groups
    scored by their two best biased scores, top-k within the best groups; weights are the
    unbiased scores, renormalised (norm_topk_prob) and scaled."""
    scores = logits.float().sigmoid()  # [T, E]
    choice = scores + bias
    choice = choice.masked_fill(
        ~_group_mask(choice, spec, lambda g: g.topk(2, dim=-1).values.sum(-1)), float("-inf")
    )
    ids = torch.topk(choice, spec.top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if spec.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, weights * spec.routed_scaling_factor
