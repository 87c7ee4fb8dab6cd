"""Tiny random transformers MoE models built in memory for the training-hook tests, from the
config dicts of the `tiny_config` fixture, with routing spread as in conftest's save_random_model;
and a plain-torch recomputation of their routers' choices (the oracle of those tests)."""

import torch
import transformers

from moeweave.train.balance import routers


def tiny_moe(config: dict, seed: int = 0) -> torch.nn.Module:
    """The model of a config.json dict (as `tiny_config` returns), random, in eval mode."""
    fields = dict(config)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.15)
    return model.eval()


def token_batch(seed: int, batch: int = 4, length: int = 16) -> torch.Tensor:
    """input_ids [batch, length] over the fixture vocabulary (97)."""
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def router_inputs(model, input_ids) -> list[torch.Tensor]:
    """The hidden states [T, H] each router sees on a forward of input_ids."""
    seen = []
    hooks = [
        router.register_forward_pre_hook(lambda _, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
        for router in routers(model)
    ]
    with torch.no_grad():
        model(input_ids)
    for hook in hooks:
        hook.remove()
    return seen


def plain_choice(router, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain-torch top-k indices [T, K] of the biased selection score of one router."""
    logits = h.float() @ router.weight.float().t()
    kind = type(router).__name__
    if kind == "DeepseekV3TopkRouter":
        return torch.topk(v3_choice(router, logits.sigmoid() + bias), router.top_k, dim=-1).indices
    if kind == "DeepseekV2TopkRouter" and router.topk_method == "group_limited_greedy":
        grouped = (logits + bias).view(-1, router.num_group, router.num_experts // router.num_group)
        kept = torch.topk(grouped.max(-1).values, router.topk_group, dim=-1).indices
        outside = torch.ones_like(grouped[..., 0], dtype=torch.bool).scatter_(1, kept, False)
        choice = grouped.masked_fill(outside[..., None], float("-inf")).view(-1, router.num_experts)
        return torch.topk(choice, router.top_k, dim=-1).indices
    return torch.topk(logits + bias, router.top_k, dim=-1).indices


def v3_choice(router, biased: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's biased scores [T, E] with the experts outside the kept groups at -inf."""
    grouped = biased.view(-1, router.num_group, router.num_experts // router.num_group)
    kept = torch.topk(grouped.topk(2, dim=-1).values.sum(-1), router.topk_group, dim=-1).indices
    outside = torch.ones_like(grouped[..., 0], dtype=torch.bool).scatter_(1, kept, False)
    return grouped.masked_fill(outside[..., None], float("-inf")).view(-1, router.num_experts)


class ExpertMLP(torch.nn.Module):
    """One expert as transformers 4 and DeepSeek's remote code store it: three linears."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act):
        super().__init__()
        inter, hidden = down.shape[1], down.shape[0]
        self.gate_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.up_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.down_proj = torch.nn.Linear(inter, hidden, bias=False)
        with torch.no_grad():
            self.gate_proj.weight.copy_(gate_up[:inter])
            self.up_proj.weight.copy_(gate_up[inter:])
            self.down_proj.weight.copy_(down)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class PerExpertExperts(torch.nn.ModuleList):
    """The per-expert layout of a fused transformers 5 experts module (same weights), called as
    the fused one is: (hidden [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]."""

    def __init__(self, fused: torch.nn.Module):
        super().__init__(
            ExpertMLP(fused.gate_up_proj[e].detach(), fused.down_proj[e].detach(), fused.act_fn)
            for e in range(fused.gate_up_proj.shape[0])
        )

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        out = torch.zeros_like(hidden)
        for e in torch.unique(top_k_index).tolist():
            token, k = (top_k_index == e).nonzero(as_tuple=True)
            out.index_add_(0, token, self[e](hidden[token]) * top_k_weights[token, k, None])
        return out


def per_expert_layout(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every fused experts module replaced, in place, by its per-expert layout."""
    for module in list(model.modules()):
        if hasattr(getattr(module, "experts", None), "gate_up_proj"):
            module.experts = PerExpertExperts(module.experts)
    return model
