"""The stale-gate predictor on the bundled model's held-out text beats a frequency-only baseline
at recall, with as many guesses per step: decoding token by token through the in-RAM model, each
MoE layer's routing is recorded, then for every step both predict the next layer's experts."""

import json
from collections import Counter

import torch

import moeweave.models
from moeweave.engine.predictors import StaleGate
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.model import KVCache
from moeweave.models.moe_block import MoEBlock


def routing_trace(model, ids: list[int]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per decode step, per MoE layer: (the layer's input x [1, H], its top-k ids [1, K])."""
    blocks = [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoEBlock)]
    trace, step = [], []
    for block in blocks:
        provider = block.experts

        def record(layer, x, topk_ids, topk_weights, provider=provider):
            step.append((x.clone(), topk_ids.clone()))
            return provider(layer, x, topk_ids, topk_weights)

        block.experts = record
    cache = KVCache()
    for token in ids:
        model(torch.tensor([[token]]), cache=cache)
        trace.append(step)
        step = []
    return trace


def test_stale_gate_recall_beats_expert_frequency():
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    text = json.loads((DEMO_MODEL_DIR / "heldout_snippets.json").read_text())["wiki"]
    trace = routing_trace(model, model.tokenizer.encode(text).ids[:96])
    routers = [layer.mlp.router for layer in model.layers if isinstance(layer.mlp, MoEBlock)]
    stale_gate = StaleGate(routers, model.spec.top_k)
    frequency = [Counter() for _ in routers]
    hits = {"stale-gate": 0, "frequency": 0}
    needed = 0
    for step in trace:
        for position in range(len(step) - 1):
            x, ids = step[position]
            guesses = stale_gate(position, x, ids)
            most_frequent = [e for e, _ in frequency[position + 1].most_common(len(guesses))]
            actual = set(step[position + 1][1].flatten().tolist())
            hits["stale-gate"] += len(actual & set(guesses))
            hits["frequency"] += len(actual & set(most_frequent))
            needed += len(actual)
        for position, (_, ids) in enumerate(step):
            frequency[position].update(ids.flatten().tolist())
    recall = {name: count / needed for name, count in hits.items()}
    assert recall["stale-gate"] > recall["frequency"], recall
