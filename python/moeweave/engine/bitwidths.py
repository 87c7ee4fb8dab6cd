"""EdgeMoE's expert-wise bitwidth adaptation (SPEC §1), on the in-RAM model:

1. importance: with every expert at the high width, put ONE expert at the low width, measure the
   calibration loss increase, restore; for every expert (each swap is one ExpertTable slot);
2. selection: the largest k such that the k least important experts at the low width (the rest
   high) keep calibration perplexity within (1 + tolerance) of the all-high one, by bisection.

The result is a {(layer, expert): bits} map for write_store. Quantisation follows
moeweave.quant.policy, as write_store(sym=None) and moeweave.models.load do.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from moeweave.engine.calibration import mean_loss, perplexity
from moeweave.models import load
from moeweave.models.moe_block import MoEBlock
from moeweave.quant.policy import quantize_as
from moeweave.store.checkpoint import ExpertCheckpoint


@dataclass
class BitwidthChoice:
    bits: dict[tuple[int, int], int]
    ranking: list[tuple[float, int, int]]  # (loss increase, layer, expert), least important first
    low_count: int
    perplexity_high: float
    perplexity_chosen: float


def choose_bitwidths(
    hf_dir: Path, chunks: list[torch.Tensor], high: int, low: int, tolerance: float, dtype: torch.dtype
) -> BitwidthChoice:
    model = load(hf_dir, experts=f"int{high}", dtype=dtype)
    tables = {
        index: layer.mlp.experts.tables[index]
        for index, layer in enumerate(model.layers)
        if isinstance(layer.mlp, MoEBlock)
    }
    high_slots = {(layer, e): table[e] for layer, table in tables.items() for e in range(len(table))}
    with ExpertCheckpoint(hf_dir) as checkpoint:
        low_slots = {
            key: tuple(
                quantize_as(checkpoint.expert(*key)[0][p], f"int{low}") for p in ("gate", "up", "down")
            )
            for key in tqdm(high_slots, desc=f"int{low} copies", unit="expert")
        }

    def loss_with_low(keys) -> float:
        for layer, e in keys:
            tables[layer].set_slot(e, low_slots[(layer, e)])
        try:
            return mean_loss(model, chunks)
        finally:
            for layer, e in keys:
                tables[layer].set_slot(e, high_slots[(layer, e)])

    base = mean_loss(model, chunks)
    ranking = sorted(
        (loss_with_low([key]) - base, *key) for key in tqdm(high_slots, desc="importance", unit="expert")
    )
    order = [(layer, e) for _, layer, e in ranking]
    limit = perplexity(base) * (1 + tolerance)
    low_count, lo, hi = 0, 1, len(order)  # invariant: low_count experts are within the limit
    while lo <= hi:
        middle = (lo + hi) // 2
        if perplexity(loss_with_low(order[:middle])) <= limit:
            low_count, lo = middle, middle + 1
        else:
            hi = middle - 1
    chosen = set(order[:low_count])
    return BitwidthChoice(
        bits={key: low if key in chosen else high for key in order},
        ranking=ranking,
        low_count=low_count,
        perplexity_high=perplexity(base),
        perplexity_chosen=perplexity(loss_with_low(order[:low_count])),
    )


def bits_map(choice: BitwidthChoice) -> dict[str, int]:
    """write_store's {"L.E": bits} form."""
    return {f"{layer}.{e}": bits for (layer, e), bits in choice.bits.items()}
