"""ESFT over a frozen base in moeweave's fused op (use_moeweave_experts): with bf16 experts the
logits and the tuned experts' gradients agree with transformers' own fp32 forward under
freeze_except (the parametrized path); over an INT4 base the packed experts and every other
weight stay bit-identical while the selected experts train, and export writes what trained."""

import pytest
import torch
from tiny_moe import tiny_moe, token_batch

from moeweave.integrations.transformers import use_moeweave_experts
from moeweave.train import esft

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_bf16_base_matches_the_parametrized_fp32_path(tiny_config):
    config = tiny_config("qwen3_moe")
    reference, fused = tiny_moe(config), use_moeweave_experts(tiny_moe(config), experts="bf16")
    layer = sorted(esft.moe_layers(reference))[0]
    selection = {layer: [2, 6]}
    ref_params, fused_params = esft.freeze_except(reference, selection), esft.freeze_except(fused, selection)
    ids = token_batch(7)
    ref_loss, fused_loss = reference(ids, labels=ids).loss, fused(ids, labels=ids).loss
    assert float(fused_loss) == pytest.approx(float(ref_loss), rel=1e-2)
    ref_loss.backward()
    fused_loss.backward()
    # the parametrized path's trainables: gate_up rows, then down rows, of the selected experts
    for ref, got in zip(ref_params, fused_params, strict=True):
        assert _relative(got.grad, ref.grad) < 5e-2


def test_int4_base_stays_packed_and_frozen(tiny_config, tmp_path):
    model = use_moeweave_experts(tiny_moe(tiny_config("mixtral")), experts="int4")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    layers = sorted(esft.moe_layers(model))
    selection = {layers[0]: [0, 3], layers[-1]: [5]}
    trainable = esft.freeze_except(model, selection)
    experts = model.get_submodule(f"model.layers.{layers[0]}.mlp.experts")
    table = experts._moeweave_table[1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    losses = []
    ids = token_batch(30)
    for _ in range(4):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert experts._moeweave_table[1] is table  # the packed base was never rebuilt
    for key, value in model.state_dict().items():
        if key in before:
            assert torch.equal(value, before[key]), key
    initial = _initial(before, selection)
    assert all(not torch.equal(p, start) for p, start in zip(trainable, initial, strict=True))
    adapter = esft.tuned_experts(model, selection)
    tuned = experts.moeweave_tuned
    inter = tuned.down.shape[-1]
    assert torch.equal(adapter.experts[(layers[0], 3)][0], tuned.gate_up[1, :inter].detach())
    assert torch.equal(adapter.experts[(layers[0], 3)][2], tuned.down[1].detach())
    path = esft.export_adapter(model, selection, tmp_path / "adapter")
    with pytest.raises(ValueError, match="needs a base model"):
        esft.apply_adapter(model, path)


def _initial(before: dict, selection: dict) -> list[torch.Tensor]:
    """The trainables' starting values, in freeze_except's order (per layer: gate_up, down)."""
    out = []
    for layer in selection:
        prefix = f"model.layers.{layer}.mlp.experts"
        chosen = sorted(selection[layer])
        out += [
            before[f"{prefix}.gate_up_proj"][chosen].float(),
            before[f"{prefix}.down_proj"][chosen].float(),
        ]
    return out
