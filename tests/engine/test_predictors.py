"""Each predictor on the bundled model's held-out text beats a frequency-only baseline at recall,
with as many guesses per step: decoding token by token through the in-RAM model, each MoE layer's
routing is recorded, then for every step both predict the next layer's experts. The path
statistics are profiled on the other held-out domains than the one evaluated."""

import json
from collections import Counter

import torch

import moeweave.models
from moeweave.engine.calibration import token_chunks
from moeweave.engine.paths import PathCounts, PathPredictor, profile_paths
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


def recall_against_frequency(trace, predictor) -> dict[str, float]:
    positions = len(trace[0])
    frequency = [Counter() for _ in range(positions)]
    hits = {"predictor": 0, "frequency": 0}
    needed = 0
    for step in trace:
        for position in range(positions - 1):
            x, ids = step[position]
            guesses = predictor(position, x, ids)
            most_frequent = [e for e, _ in frequency[position + 1].most_common(len(guesses))]
            actual = set(step[position + 1][1].flatten().tolist())
            hits["predictor"] += len(actual & set(guesses))
            hits["frequency"] += len(actual & set(most_frequent))
            needed += len(actual)
        for position, (_, ids) in enumerate(step):
            frequency[position].update(ids.flatten().tolist())
    return {name: count / needed for name, count in hits.items()}


SNIPPETS = json.loads((DEMO_MODEL_DIR / "heldout_snippets.json").read_text())


def test_stale_gate_recall_beats_expert_frequency():
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    trace = routing_trace(model, model.tokenizer.encode(SNIPPETS["wiki"]).ids[:96])
    routers = [layer.mlp.router for layer in model.layers if isinstance(layer.mlp, MoEBlock)]
    recall = recall_against_frequency(trace, StaleGate(routers, model.spec.top_k))
    assert recall["predictor"] > recall["frequency"], recall


def test_path_statistics_recall_beats_expert_frequency():
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    layers = [index for index, layer in enumerate(model.layers) if isinstance(layer.mlp, MoEBlock)]
    calibration = "\n\n".join(text for name, text in SNIPPETS.items() if name != "news")
    counts = profile_paths(model, token_chunks(model.tokenizer, calibration, 2048), layers, model.spec.top_k)
    trace = routing_trace(model, model.tokenizer.encode(SNIPPETS["news"]).ids[:96])
    recall = recall_against_frequency(trace, PathPredictor(counts))
    assert recall["predictor"] > recall["frequency"], recall


def test_path_statistics_survive_a_round_trip(tmp_path):
    counts = PathCounts(3, 2)
    counts.add_token([[0, 1], [2, 3], [1, 4]])
    counts.save(tmp_path)
    loaded = PathCounts.load(tmp_path)
    assert loaded.first == counts.first and loaded.second == counts.second
    assert loaded.second[2][(2, 0)] == Counter({1: 1, 4: 1})  # a at layer 1, b at layer 0 -> e at layer 2
