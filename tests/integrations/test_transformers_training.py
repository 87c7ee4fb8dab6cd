"""Training over a quantised frozen base: a transformers MoE model whose experts run on
moeweave's INT4 fused op gets the gradients of the same model running transformers' own experts
on the dequantised weights, trains, and compiles without graph breaks."""

import pytest
import torch
from transformers_oracle import oracle, oracle_with_experts_as

from moeweave.integrations.transformers import use_moeweave_experts

ARCHITECTURES = ["qwen3_moe", "mixtral"]


def _batch(model, seed=0):
    ids = torch.randint(2, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def _freeze_experts(model):
    for module in model.modules():
        if hasattr(module, "gate_up_proj"):
            module.gate_up_proj.requires_grad_(False)
            module.down_proj.requires_grad_(False)
    return model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_match_the_dequantised_experts(tiny_checkpoint, tmp_path, architecture):
    path = tiny_checkpoint(architecture)
    expected_model = _freeze_experts(oracle_with_experts_as(path, "int4", tmp_path))
    model = use_moeweave_experts(oracle(path), experts="int4")
    batch = _batch(model)
    expected_model(**batch).loss.backward()
    model(**batch).loss.backward()
    expected = dict(expected_model.named_parameters())
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert any("gate" in name and "proj" not in name for name, _ in trained)  # the router learns
    for name, parameter in trained:
        want = expected[name].grad
        # The fused op's int8 activations move each gradient by ~1 % of its norm.
        error = float((parameter.grad - want).norm() / want.norm().clamp(min=1e-12))
        assert error < 0.05, (name, error)
    assert all(p.grad is None for name, p in model.named_parameters() if "experts" in name)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_twenty_steps_lower_the_loss(tiny_checkpoint, architecture):
    model = use_moeweave_experts(oracle(tiny_checkpoint(architecture)), experts="int4").train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = _batch(model, seed=1)
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_model_compiles_without_graph_breaks(tiny_checkpoint):
    model = use_moeweave_experts(oracle(tiny_checkpoint("qwen3_moe")), experts="int4")
    ids = _batch(model)["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits
        got = torch.compile(model, fullgraph=True)(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
