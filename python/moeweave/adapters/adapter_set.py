"""Many ESFT adapters over one base model in RAM (SPEC §2, ExpertWeave): per MoE layer one expert
table whose first E slots are the base's experts and whose other slots come from the layer's
expert pool, and a remap table [A + 1, E] whose row a + 1 sends base expert e to adapter a's copy
of it (or to e, where a did not tune it). A batch mixing requests of different adapters runs each
MoE layer once: the frozen router's top-k, then moeweave::reroute with each token's adapter,
then the fused MoE op over the whole table. Routing weights are unchanged, so every request gets
exactly what the merged model (the base with its adapter's experts substituted) computes.

    adapters = AdapterSet(model, max_adapters=8)
    adapters.load(load_esft("law-adapter", model.spec))
    logits = model(ids, adapters=adapters.ids(["law-adapter", None])).logits  # None: the base

Dimension legend: B sequences, E routed experts per layer, A adapters at most.
"""

import torch

from moeweave.adapters.esft import EsftAdapter, check_selection
from moeweave.adapters.pool import DeviceExpertPool, ExpertPool, slot_bytes
from moeweave.engine.offload import OffloadedExperts
from moeweave.models.experts import FusedExperts
from moeweave.models.moe_block import MoEBlock
from moeweave.quant import ExpertTable
from moeweave.quant.experts import Projection
from moeweave.quant.format import QuantizedWeight
from moeweave.quant.quantize import quantize
from moeweave.store.manifest import DTYPES, PROJECTIONS, ProjectionLayout

BASE = -1  # the adapter id of a request on the base model


class AdapterSet:
    def __init__(self, model, max_adapters: int = 16):
        """Widens `model`'s expert tables and hooks its MoE blocks; the model then takes
        `adapters=`. Its experts: fused, all in RAM (moeweave.models.load with experts='bf16' or
        'intN'), or offloaded by the on-device engine (Engine.open(...).model), whose cache then
        fills the wide tables' base slots while the adapters' experts stay in RAM."""
        blocks = [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoEBlock)]
        providers = {id(block.experts): block.experts for block in blocks}
        provider = blocks[0].experts
        if len(providers) != 1 or not isinstance(provider, FusedExperts | OffloadedExperts):
            raise ValueError(
                "AdapterSet: the model's experts must be fused (moeweave.models.load with experts='bf16' or "
                "'intN') or offloaded by moeweave.engine"
            )
        experts = model.spec.num_experts
        # What an adapter expert is quantised like: the base expert it replaces, or for an
        # offloaded base (whose cache may not hold it) that expert's layout in the store.
        if isinstance(provider, OffloadedExperts):
            store = provider.store
            self._reference = lambda layer, e: tuple(
                store.extent(layer, e).projections[p] for p in PROJECTIONS
            )
            largest = {
                layer: max(store.extent(layer, e).length for e in range(experts)) for layer in provider.tables
            }
        else:
            self._reference = lambda layer, e: provider.tables[layer].experts[e]
            largest = {
                layer: max(slot_bytes(table.experts[e]) for e in range(experts))
                for layer, table in provider.tables.items()
            }
        spec = model.spec
        self.spec, self.max_adapters = spec, max_adapters
        self.tables: dict[int, ExpertTable] = {}
        self.pools: dict[int, ExpertPool | DeviceExpertPool] = {}
        self.remap: dict[int, torch.Tensor] = {}  # layer -> [A + 1, E] int32
        for block in blocks:
            base = provider.tables[block.layer]
            table = ExpertTable.empty(
                experts * (1 + max_adapters), spec.hidden_size, spec.moe_intermediate_size, base.device
            )
            for e in range(experts):
                table.set_slot(e, base.experts[e])
            capacity = experts * max_adapters
            self.pools[block.layer] = (
                ExpertPool(largest[block.layer], capacity)
                if base.device.type == "cpu"
                else DeviceExpertPool(largest[block.layer], capacity, base.device)
            )
            self.tables[block.layer] = table
            self.remap[block.layer] = torch.arange(experts, dtype=torch.int32, device=base.device).repeat(
                max_adapters + 1, 1
            )
            provider.tables[block.layer] = table
            block.remap = self.remap[block.layer]
        self.index: dict[str, int] = {}  # adapter name -> adapter id (its remap row - 1)
        self._slots: dict[str, list[tuple[int, int]]] = {}  # name -> (layer, pool slot) it holds

    def load(self, adapter: EsftAdapter) -> int:
        """Puts the adapter's experts, quantised like the base's, into the pools; returns its id."""
        if adapter.name in self.index:
            raise ValueError(f"adapter {adapter.name!r} is already loaded")
        free = sorted(set(range(self.max_adapters)) - set(self.index.values()))
        if not free:
            raise ValueError(
                f"AdapterSet: all {self.max_adapters} adapter places are taken; unload one first"
            )
        check_selection(adapter.selection, self.spec, f"adapter {adapter.name!r}")
        row, held = free[0] + 1, []
        try:
            for (layer, e), weights in adapter.experts.items():
                table = self.tables[layer]
                like = self._reference(layer, e)
                slot, placed = self.pools[layer].put(
                    tuple(_like(w, base) for w, base in zip(weights, like, strict=True))
                )
                held.append((layer, slot))
                table.set_slot(self.spec.num_experts + slot, placed)
                self.remap[layer][row, e] = self.spec.num_experts + slot
        except BaseException:
            self._free(row, held)
            raise
        self.index[adapter.name] = row - 1
        self._slots[adapter.name] = held
        return row - 1

    def unload(self, name: str) -> None:
        """Removes an adapter; requests on it must have finished (the scheduler sees to that)."""
        if name not in self.index:
            raise KeyError(f"adapter {name!r} is not loaded")
        self._free(self.index.pop(name) + 1, self._slots.pop(name))

    def _free(self, row: int, held: list[tuple[int, int]]) -> None:
        for layer, slot in held:
            self.remap[layer][row] = torch.arange(
                self.spec.num_experts, dtype=torch.int32, device=self.remap[layer].device
            )
            self.tables[layer].set_slot(self.spec.num_experts + slot, None)
            self.pools[layer].release(slot)

    def ids(self, names: list[str | None]) -> torch.Tensor:
        """Per sequence, its adapter's id (BASE for None): the model's `adapters` argument [B]."""
        unknown = [name for name in names if name is not None and name not in self.index]
        if unknown:
            raise KeyError(f"adapter {unknown[0]!r} is not loaded (loaded: {sorted(self.index)})")
        return torch.tensor([BASE if name is None else self.index[name] for name in names], dtype=torch.int32)

    def resident_bytes(self) -> int:
        """Memory the pools hold (committed pages)."""
        return sum(pool.resident_bytes() for pool in self.pools.values())


def _like(w: torch.Tensor, base: Projection | ProjectionLayout) -> Projection:
    """w [N, K] in the base projection's format (a projection, or its layout in an expert
    store): its bits, group size, symmetry and scale dtype, or plain."""
    if isinstance(base, ProjectionLayout):
        if base.format == "bf16":
            return w.detach().to(torch.bfloat16).contiguous()
        bits, group, sym, scale_dtype = base.bits, base.group_size, base.sym, DTYPES[base.scale_dtype]
    elif isinstance(base, QuantizedWeight):
        bits, group, sym, scale_dtype = base.bits, base.group_size, base.zeros is None, base.scales.dtype
    else:
        return w.detach().to(base.dtype).contiguous()
    return quantize(w.detach().float().cpu(), bits=bits, group_size=group, sym=sym, scale_dtype=scale_dtype)
