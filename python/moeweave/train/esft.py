"""Expert-specialised fine-tuning (ESFT, arXiv 2407.01906; ../shared/SPEC.md §2) on transformers'
MoE models: score the experts on a task's data, select the few that carry it, train only those,
export them as an ESFT adapter (moeweave.adapters' format, which `moeweave serve` loads).

    scores = esft.expert_scores(model, batches, by="token")   # {layer: [E]}, each layer sums to 1
    selection = esft.select_experts(scores, p=0.2)            # {layer: [expert, ...]}
    esft.freeze_except(model, selection)                      # only those experts train
    ...train (a plain loop or transformers.Trainer)...
    esft.export_adapter(model, selection, "adapter-dir")
    esft.apply_adapter(base_model, "adapter-dir")             # the tuned model again

Scores, per MoE layer l and routed expert i over the N tokens of `batches` (padding excluded):
average gate score g_i = (1/N) sum_t g_it, g_it the router's probability for i (softmax, or
DeepSeek-V3's sigmoid score) when i is among the token's top k, else 0, normalised to sum to 1 per
layer; token selection ratio r_i = (1/(N k)) sum_t 1[i in top-k of t], which sums to 1 per layer.
Layers are normalised one by one (DeepSeek's public script normalises across layers, which lets
one layer's scale decide another's selection).

Experts come in two layouts. Transformers 5 stores every expert of a layer in one tensor
(gate_up_proj [E, 2I, H], down_proj [E, H, I]); it is frozen except its selected rows: the tensor
becomes the frozen original with those rows replaced by a trainable parameter of the selected
experts alone (torch.nn.utils.parametrize), so the optimizer never sees the other rows and they
stay bit-identical whatever it does (weight decay included). Transformers 4 and the models of
DeepSeek's own remote code (the ones ESFT was published on) keep one module per expert in a
ModuleList, with gate_proj/up_proj/down_proj (w1/w3/w2 in Mixtral's) linears; there the selected
experts' parameters are simply the only ones left trainable. When the experts run in
moeweave's fused op (`use_moeweave_experts(model, "int4")`: a frozen INT4 base), the selected
experts train as fp32 copies computed in torch for the pairs routed to them (TunedExperts) and the
packed base is never touched.

Dimension legend: T tokens, E routed experts, k experts per token, H hidden, I expert intermediate.
"""

import re
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from moeweave.adapters.esft import EsftAdapter, load_esft, save_esft
from moeweave.models.spec import spec_from_config
from moeweave.train.balance import routers

SCORES = ("token", "gate")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def moe_layers(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Decoder layer index -> its router, in layer order; ValueError for a model without MoE layers."""
    known = {id(router) for router in routers(model)}
    layers = {}
    for name, module in model.named_modules():
        if id(module) in known:
            match = _LAYER.search(name + ".")
            if match is None:
                raise ValueError(f"esft: cannot tell the decoder layer of {name} from its module name")
            layers[int(match[1])] = module
    return dict(sorted(layers.items()))


def _probabilities(router: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The router's per-expert scores [T, E] from its logits: DeepSeek-V3's sigmoid, else softmax."""
    if type(router).__name__ == "DeepseekV3TopkRouter":
        return logits.float().sigmoid()
    return F.softmax(logits.float(), dim=-1)


def expert_scores(
    model: torch.nn.Module, batches: Iterable, by: str = "token", progress: bool = True
) -> dict[int, torch.Tensor]:
    """Per MoE layer, each routed expert's share of `batches` (input_ids tensors, or dicts of model
    keyword arguments whose attention_mask, when given, excludes padding): {layer: [E] fp64}
    summing to 1 per layer, by token selection ratio ("token") or average gate score ("gate")."""
    if by not in SCORES:
        raise ValueError(f"esft: by must be one of {SCORES}, got {by!r}")
    layers = moe_layers(model)
    totals = {layer: torch.zeros(router.num_experts, dtype=torch.float64) for layer, router in layers.items()}
    current_mask: list[torch.Tensor | None] = [None]

    def hook(layer: int):
        def record(router, inputs, outputs):
            logits, _, indices = outputs  # [T, E], [T, k]
            keep = current_mask[0]
            chosen = torch.zeros_like(logits, dtype=torch.float64).scatter_(1, indices, 1.0)  # [T, E]
            if by == "gate":
                chosen = chosen * _probabilities(router, logits).double()
            if keep is not None:
                chosen = chosen[keep.reshape(-1).bool()]
            totals[layer] += chosen.sum(0).cpu()

        return record

    handles = [router.register_forward_hook(hook(layer)) for layer, router in layers.items()]
    tokens = 0
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="scoring experts", unit="batch", disable=not progress):
                kwargs = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
                current_mask[0] = kwargs.get("attention_mask")
                model(**kwargs)
                ids = kwargs["input_ids"]
                tokens += int(current_mask[0].sum()) if current_mask[0] is not None else ids.numel()
    finally:
        for handle in handles:
            handle.remove()
    if not tokens:
        raise ValueError("esft: expert_scores got no tokens")
    return {layer: total / total.sum() for layer, total in sorted(totals.items())}


def select_experts(scores: dict[int, torch.Tensor], p: float = 0.2) -> dict[int, list[int]]:
    """Per layer, the highest-scoring experts down to the shortest prefix whose cumulative score
    reaches p (the expert that crosses p included): {layer: [expert, ...]} in score order."""
    if not 0 < p <= 1:
        raise ValueError(f"esft: p must be in (0, 1], got {p}")
    selection = {}
    for layer, layer_scores in scores.items():
        order = torch.argsort(layer_scores, descending=True, stable=True)
        cumulative = torch.cumsum(layer_scores[order].double(), 0)
        count = min(int(torch.searchsorted(cumulative, torch.tensor(p, dtype=torch.float64))) + 1, len(order))
        selection[layer] = order[:count].tolist()
    return selection


class SelectedExperts(torch.nn.Module):
    """Parametrization of a fused expert tensor [E, ...]: the frozen original with the rows of the
    selected experts taken from `tuned` [S, ...], the only trainable part."""

    def __init__(self, original: torch.Tensor, experts: list[int]):
        super().__init__()
        self.register_buffer("experts", torch.tensor(experts, dtype=torch.long), persistent=False)
        self.tuned = torch.nn.Parameter(original.detach()[experts].clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original.index_copy(0, self.experts, self.tuned)


class TunedExperts(torch.nn.Module):
    """The selected experts of a layer whose frozen experts run in moeweave's fused op
    (`use_moeweave_experts`, e.g. an INT4 base): their own trainable fp32 copies, computed in torch
    for the (token, expert) pairs routed to them, while the fused op computes every other pair.
    Installed as the experts module's `moeweave_tuned`, which the moeweave experts forward calls."""

    def __init__(self, module: torch.nn.Module, experts: list[int]):
        super().__init__()
        slots = torch.full((module.gate_up_proj.shape[0],), -1, dtype=torch.long)
        slots[experts] = torch.arange(len(experts))
        self.register_buffer(
            "slots", slots, persistent=False
        )  # expert -> its row in the tuned tensors, or -1
        self.gate_up = torch.nn.Parameter(module.gate_up_proj.detach()[experts].float().clone())  # [S, 2I, H]
        self.down = torch.nn.Parameter(module.down_proj.detach()[experts].float().clone())  # [S, H, I]
        self.act = module.act_fn

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, frozen) -> torch.Tensor:
        """x [T, H], ids [T, k] int32, weights [T, k] fp32 -> [T, H] fp32; frozen(x, ids, weights)
        computes the stage on the frozen experts (the fused op)."""
        slot = self.slots[ids.long()]  # [T, k]
        tuned = slot >= 0
        y = frozen(x, ids, weights.masked_fill(tuned, 0.0)).float()
        for row in torch.unique(slot[tuned]).tolist():
            token, k = (slot == row).nonzero(as_tuple=True)
            gate, up = F.linear(x[token].float(), self.gate_up[row]).chunk(2, dim=-1)
            out = F.linear(self.act(gate) * up, self.down[row]) * weights[token, k, None]
            y = y.index_add(0, token, out)
        return y


_PER_EXPERT_LINEARS = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


def _per_expert_linears(module: torch.nn.Module, e: int) -> tuple[torch.nn.Linear, ...] | None:
    """The (gate, up, down) linears of expert e when the experts are a ModuleList of per-expert
    MLPs (weights [I, H], [I, H], [H, I]); None for transformers 5's fused tensors."""
    if not isinstance(module, torch.nn.ModuleList):
        return None
    for names in _PER_EXPERT_LINEARS:
        if all(hasattr(module[e], name) for name in names):
            return tuple(getattr(module[e], name) for name in names)
    raise ValueError(
        f"esft: expert {e} is a {type(module[e]).__name__} without gate_proj/up_proj/down_proj or w1/w3/w2"
    )


def _experts_modules(model: torch.nn.Module, selection: dict[int, list[int]]) -> dict[int, torch.nn.Module]:
    """The experts module of each layer of `selection` (the router's sibling), after checking that
    the layers are MoE layers and the experts distinct routed expert ids."""
    layers = moe_layers(model)
    blocks = {id(m.gate): m for m in model.modules() if hasattr(m, "experts") and hasattr(m, "gate")}
    modules = {}
    for layer, experts in selection.items():
        if layer not in layers:
            raise ValueError(
                f"esft: layer {layer} is not an MoE layer of this model (those are {sorted(layers)})"
            )
        bad = [e for e in experts if not 0 <= e < layers[layer].num_experts]
        if bad or len(set(experts)) != len(experts):
            raise ValueError(
                f"esft: layer {layer}: experts {experts} must be distinct ids below {layers[layer].num_experts}"
            )
        if id(layers[layer]) not in blocks:
            raise ValueError(f"esft: layer {layer}'s router has no experts module beside it")
        modules[layer] = blocks[id(layers[layer])].experts
    return modules


def freeze_except(model: torch.nn.Module, selection: dict[int, list[int]]) -> list[torch.nn.Parameter]:
    """Freeze everything but the selected routed experts; returns the parameters left to train."""
    modules = _experts_modules(model, selection)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trainable = []
    for layer, experts in selection.items():
        if not experts:
            continue
        module = modules[layer]
        if isinstance(module, torch.nn.ModuleList):
            for e in experts:
                for linear in _per_expert_linears(module, e):
                    trainable += [linear.weight.requires_grad_(True)]
            continue
        if getattr(module, "moeweave_experts", None) is not None:  # a frozen base in moeweave's fused op
            module.moeweave_tuned = TunedExperts(module, sorted(experts))
            trainable += [module.moeweave_tuned.gate_up, module.moeweave_tuned.down]
            continue
        for name in ("gate_up_proj", "down_proj"):
            selected = SelectedExperts(getattr(module, name), sorted(experts))
            parametrize.register_parametrization(module, name, selected)
            trainable.append(selected.tuned)
    return trainable


def tuned_experts(model: torch.nn.Module, selection: dict[int, list[int]]) -> EsftAdapter:
    """The selected experts' current weights as an adapter (gate [I, H], up [I, H], down [H, I])."""
    modules = _experts_modules(model, selection)
    experts = {}
    with torch.no_grad():
        for layer, chosen in selection.items():
            module = modules[layer]
            tuned = getattr(module, "moeweave_tuned", None)
            for e in chosen:
                linears = _per_expert_linears(module, e)
                if linears is not None:
                    experts[(layer, e)] = tuple(linear.weight.detach().clone() for linear in linears)
                    continue
                if tuned is not None and tuned.slots[e] >= 0:
                    gate_up, down = tuned.gate_up[tuned.slots[e]], tuned.down[tuned.slots[e]]
                else:
                    gate_up, down = module.gate_up_proj[e], module.down_proj[e]  # [2I, H], [H, I]
                inter = down.shape[-1]
                weights = (gate_up[:inter], gate_up[inter:], down)
                experts[(layer, e)] = tuple(w.detach().clone().contiguous() for w in weights)
    return EsftAdapter("tuned", experts)


def export_adapter(model: torch.nn.Module, selection: dict[int, list[int]], out_dir: str | Path) -> Path:
    """Write the selected experts in the ESFT format (expert_cfg.json + safetensors of those experts
    only, full replacement weights) into a new or empty directory."""
    adapter = tuned_experts(model, {layer: experts for layer, experts in selection.items() if experts})
    adapter.name = Path(out_dir).name
    return save_esft(adapter, out_dir)


def apply_adapter(model: torch.nn.Module, path: str | Path) -> None:
    """Substitute the experts of the ESFT adapter in directory `path` into a base transformers
    model, in place, after checking it against the model's config (moeweave.adapters' load_esft:
    layers, expert ids, shapes; an adapter of another base is refused)."""
    adapter = load_esft(path, spec_from_config(model.config.to_dict()))
    modules = _experts_modules(model, adapter.selection)
    with torch.no_grad():
        for (layer, e), (gate, up, down) in adapter.experts.items():
            module = modules[layer]
            if parametrize.is_parametrized(module) or hasattr(module, "moeweave_tuned"):
                raise ValueError("esft: apply_adapter needs a base model, not one under freeze_except")
            linears = _per_expert_linears(module, e)
            if linears is not None:
                for linear, weight in zip(linears, (gate, up, down), strict=True):
                    linear.weight.copy_(weight)
                continue
            module.gate_up_proj[e].copy_(torch.cat([gate, up]))
            module.down_proj[e].copy_(down)
