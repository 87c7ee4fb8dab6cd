"""ESFT on transformers' own MoE models (moeweave.train.esft): expert scores against a plain-torch
recomputation from the router logits (padding excluded), the selection as the minimal prefix,
frozen weights bit-identical after AdamW steps with weight decay (transformers 5's fused experts and
the per-expert layout of transformers 4 / DeepSeek's remote code), the exported adapter loaded by
moeweave.adapters and applied over a fresh base giving the trained model's logits, bad input."""

import pytest
import torch
import torch.nn.functional as F
from tiny_moe import per_expert_layout, plain_choice, router_inputs, tiny_moe, token_batch

from moeweave.adapters import AdapterError, load_esft
from moeweave.models.spec import spec_from_config
from moeweave.train import esft


def _plain_scores(model, batch: torch.Tensor, mask: torch.Tensor, by: str) -> list[torch.Tensor]:
    """Per MoE router, in order: the scores [E] recomputed from the router's inputs."""
    out = []
    for router, h in zip(esft.moe_layers(model).values(), router_inputs(model, batch), strict=True):
        logits = h.float() @ router.weight.float().t()
        bias = getattr(router, "e_score_correction_bias", torch.zeros(router.num_experts))
        chosen = torch.zeros_like(logits).scatter_(1, plain_choice(router, h, bias), 1.0)  # [T, E]
        if by == "gate":
            v3 = type(router).__name__ == "DeepseekV3TopkRouter"
            chosen = chosen * (logits.sigmoid() if v3 else F.softmax(logits, dim=-1))
        total = chosen[mask.reshape(-1)].sum(0).double()
        out.append(total / total.sum())
    return out


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3"])
@pytest.mark.parametrize("by", esft.SCORES)
def test_scores_match_plain_torch_per_layer(name, by, tiny_config):
    model = tiny_moe(tiny_config(name))
    ids = token_batch(3)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 10:] = False  # a padded row: its last tokens do not count
    scores = esft.expert_scores(
        model, [{"input_ids": ids, "attention_mask": mask.long()}], by=by, progress=False
    )
    assert list(scores) == sorted(esft.moe_layers(model))
    for got, expected in zip(scores.values(), _plain_scores(model, ids, mask, by), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        assert float(got.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 1.0])
def test_selection_is_the_minimal_prefix_reaching_p(seed, p):
    raw = torch.rand(3, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** 3
    scores = {layer: row / row.sum() for layer, row in enumerate(raw)}
    for layer, chosen in esft.select_experts(scores, p).items():
        ranked = sorted(range(16), key=lambda e: -float(scores[layer][e]))
        assert chosen == ranked[: len(chosen)]
        mass = float(scores[layer][chosen].sum())
        assert mass >= p - 1e-12 or len(chosen) == 16
        assert float(scores[layer][chosen[:-1]].sum()) < p


def test_selection_includes_the_crossing_expert_and_stops_at_an_exact_hit():
    scores = {0: torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)}
    assert esft.select_experts(scores, 0.5) == {0: [0]}
    assert esft.select_experts(scores, 0.6) == {0: [0, 1]}


def _train(model, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # every parameter
    model.train()
    for step in range(steps):
        ids = token_batch(20 + step)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("name", ["mixtral", "deepseek_v3"])
def test_only_the_selected_experts_learn(name, tiny_config):
    model = tiny_moe(tiny_config(name))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    layers = sorted(esft.moe_layers(model))
    selection = {layers[0]: [1, 5], layers[-1]: [2]}
    trainable = esft.freeze_except(model, selection)
    assert len(trainable) == 2 * len(selection)
    assert all(p.requires_grad for p in trainable)
    assert sum(p.requires_grad for p in model.parameters()) == len(trainable)
    _train(model)
    tuned = esft.tuned_experts(model, selection)
    for key, value in model.state_dict().items():
        if key.endswith((".tuned", ".original")) or key not in before:
            continue
        assert torch.equal(value, before[key]), key  # router, attention, embeddings, norms, shared experts
    for layer, chosen in selection.items():
        prefix = f"model.layers.{layer}.mlp.experts"
        gate_up, down = model.get_submodule(prefix).gate_up_proj, model.get_submodule(prefix).down_proj
        for e in range(gate_up.shape[0]):
            same = torch.equal(gate_up[e], before[f"{prefix}.gate_up_proj"][e]) and torch.equal(
                down[e], before[f"{prefix}.down_proj"][e]
            )
            assert same == (e not in chosen), (layer, e)
        for e in chosen:
            inter = down.shape[-1]
            assert torch.equal(tuned.experts[(layer, e)][0], gate_up[e, :inter].detach())


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v2"])
def test_per_expert_layout_trains_only_the_selected_experts(name, tiny_config, tmp_path):
    config = tiny_config(name)
    fused = tiny_moe(config)
    model = per_expert_layout(tiny_moe(config))
    ids = token_batch(7)
    with torch.no_grad():  # the double computes what transformers' fused experts compute
        torch.testing.assert_close(model(ids).logits, fused(ids).logits, rtol=1e-5, atol=1e-5)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    layers = sorted(esft.moe_layers(model))
    selection = {layers[0]: [1, 5], layers[-1]: [2]}
    trainable = esft.freeze_except(model, selection)
    assert len(trainable) == 3 * 3  # gate, up and down of each selected expert
    _train(model)
    experts_of = {
        f"model.layers.{layer}.mlp.experts.{e}." for layer, chosen in selection.items() for e in chosen
    }
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) != key.startswith(tuple(experts_of)), key
    path = esft.export_adapter(model, selection, tmp_path / "adapter")
    esft.apply_adapter(fused, path)  # a per-expert adapter over a fused base and back
    base = per_expert_layout(tiny_moe(config))
    esft.apply_adapter(base, path)
    with torch.no_grad():
        assert torch.equal(base(ids).logits, model(ids).logits)
        torch.testing.assert_close(fused(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_exported_adapter_applies_over_a_fresh_base(tiny_config, tmp_path):
    config = tiny_config("qwen3_moe")
    model = tiny_moe(config)
    scores = esft.expert_scores(model, [token_batch(s) for s in range(2)], progress=False)
    selection = esft.select_experts(scores, p=0.3)
    esft.freeze_except(model, selection)
    _train(model)
    path = esft.export_adapter(model, selection, tmp_path / "adapter")
    adapter = load_esft(path, spec_from_config(config))  # what moeweave serve loads
    assert adapter.selection == {layer: sorted(chosen) for layer, chosen in selection.items()}
    base = tiny_moe(config)
    esft.apply_adapter(base, path)
    ids = token_batch(99)
    with torch.no_grad():
        assert torch.equal(base(ids).logits, model(ids).logits)
    with pytest.raises(ValueError, match="needs a base model"):
        esft.apply_adapter(model, path)


def test_bad_input_is_named(tiny_config, tmp_path):
    model = tiny_moe(tiny_config("mixtral"))
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        esft.select_experts({0: torch.ones(4) / 4}, p=0.0)
    with pytest.raises(ValueError, match="by must be one of"):
        esft.expert_scores(model, [token_batch(0)], by="weight")
    with pytest.raises(ValueError, match="has no MoE router"):
        esft.expert_scores(torch.nn.Sequential(torch.nn.Linear(2, 2)), [])
    with pytest.raises(ValueError, match="layer 7 is not an MoE layer"):
        esft.freeze_except(model, {7: [0]})
    with pytest.raises(ValueError, match="must be distinct ids below 8"):
        esft.freeze_except(model, {0: [8]})
    selection = {0: [1]}
    esft.freeze_except(model, selection)
    path = esft.export_adapter(model, selection, tmp_path / "adapter")
    other = tiny_moe(tiny_config("mixtral", hidden_size=32))
    with pytest.raises(AdapterError, match="shape"):
        esft.apply_adapter(other, path)


def test_trains_under_transformers_trainer(tiny_config, tmp_path):
    import transformers

    model = tiny_moe(tiny_config("olmoe"))
    layer = sorted(esft.moe_layers(model))[0]
    before = model.get_submodule(f"model.layers.{layer}.mlp.experts").gate_up_proj.detach().clone()
    esft.freeze_except(model, {layer: [3]})
    rows = [{"input_ids": ids, "labels": ids} for ids in token_batch(5, batch=8)]
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        weight_decay=0.1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    transformers.Trainer(model=model, args=arguments, train_dataset=rows).train()
    after = model.get_submodule(f"model.layers.{layer}.mlp.experts").gate_up_proj.detach()
    changed = [e for e in range(after.shape[0]) if not torch.equal(after[e], before[e])]
    assert changed == [3]
