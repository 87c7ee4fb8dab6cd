"""WAGLE (moeweave.train.wagle) on a tiny transformers Qwen3-MoE: every scoring method against a
plain recomputation from transformers' own loss and torch.autograd.grad; the mask's exact global
count and its tie rule; masked-out gradients zero before the step and masked-out weights
bit-identical after AdamW steps with weight decay, while kept weights follow AdamW exactly;
GradDiff and NPO against plain recomputations, NPO's gradient at the reference as gradient ascent
on the forget sequences' log-likelihood and its steps lowering that likelihood; bad input."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_moe import tiny_moe, token_batch

from moeweave.train import wagle


@pytest.fixture
def model(tiny_config):
    return tiny_moe(tiny_config("qwen3_moe"))


def padded(seed: int) -> dict:
    """A batch whose first row is padding after its 11th token."""
    ids = token_batch(seed)
    attention = torch.ones_like(ids)
    attention[0, 11:] = 0
    return {"input_ids": ids, "attention_mask": attention}


def hf_loss(model, batch) -> torch.Tensor:
    """transformers' own LM loss of a batch, padding excluded from the labels."""
    if isinstance(batch, dict):
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return model(**batch, labels=labels).loss
    return model(batch, labels=batch).loss


def plain_gradients(model, batches) -> list[torch.Tensor]:
    """Σ over batches of transformers' loss gradient, per trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        for t, g in zip(total, torch.autograd.grad(hf_loss(model, batch), params), strict=True):
            t += g
    return total


def sequence_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Each sequence's summed next-token negative log-likelihood [B]."""
    logp = F.log_softmax(model(ids).logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(1)


@pytest.mark.parametrize("method", ["wagle", "snip", "gradient", "magnitude"])
def test_scores_match_plain_recomputation(method, model):
    forget, retain = [token_batch(1), padded(2)], [padded(3), token_batch(4)]
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen parameter is not scored
    gamma = 0.05
    scores = wagle.attribution_scores(model, forget, retain, method=method, gamma=gamma)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert list(scores) == list(named)
    assert all(p.grad is None for p in model.parameters())  # the caller's .grad is left alone
    g_f, g_r = plain_gradients(model, forget), plain_gradients(model, retain)
    for (name, p), f, r in zip(named.items(), g_f, g_r, strict=True):
        theta = p.detach()
        expected = {"wagle": (theta - r / gamma) * f, "snip": theta * f, "gradient": f, "magnitude": theta}
        torch.testing.assert_close(scores[name], expected[method], rtol=1e-4, atol=1e-6)


def test_random_scores_are_seeded_and_read_no_data(model):
    first = wagle.attribution_scores(model, [], [], method="random", seed=3)
    again = wagle.attribution_scores(model, [token_batch(0)], [token_batch(1)], method="random", seed=3)
    other = wagle.attribution_scores(model, [], [], method="random", seed=4)
    for name, p in model.named_parameters():
        assert first[name].shape == p.shape
        assert torch.equal(first[name], again[name])
        assert float(first[name].min()) >= 0 and float(first[name].max()) < 1
    assert any(not torch.equal(first[name], other[name]) for name in first)


@pytest.mark.parametrize("sizes", [(1,), (7, 19), (111, 1, 19)])
@pytest.mark.parametrize("ratio", [1e-9, 0.05, 0.3, 0.5, 0.999, 1.0])
def test_mask_keeps_exactly_the_top_count_by_magnitude(sizes, ratio):
    generator = torch.Generator().manual_seed(sum(sizes))
    scores = {f"p{i}": torch.randn(n, 3, generator=generator) for i, n in enumerate(sizes)}
    mask = wagle.top_ratio_mask(scores, ratio)
    total = 3 * sum(sizes)
    assert sum(int(m.sum()) for m in mask.values()) == max(1, round(ratio * total))
    assert all(mask[n].dtype == torch.bool and mask[n].shape == s.shape for n, s in scores.items())
    kept = torch.cat([s[mask[n]].abs() for n, s in scores.items()])
    dropped = torch.cat([s[~mask[n]].abs() for n, s in scores.items()])
    if dropped.numel():
        assert float(kept.min()) >= float(dropped.max())


def test_mask_is_global_not_per_layer():
    scores = {
        "loud": 5.0 + torch.arange(10.0),
        "quiet": torch.rand(30, generator=torch.Generator().manual_seed(0)),
    }
    mask = wagle.top_ratio_mask(scores, 0.25)  # 10 of 40
    assert mask["loud"].all() and not mask["quiet"].any()


def test_mask_ranks_by_magnitude_and_breaks_ties_by_position():
    scores = {"a": torch.tensor([1.0, -2.0, 2.0]), "b": torch.tensor([[2.0], [-2.0], [0.5]])}
    mask = wagle.top_ratio_mask(scores, 0.5)  # 3 of the four |S| = 2: a[1], a[2], b[0]
    assert mask["a"].tolist() == [False, True, True]
    assert mask["b"].flatten().tolist() == [True, False, False]
    assert wagle.top_ratio_mask(scores, 0.01)["a"].tolist() == [False, True, False]  # at least one
    generator = torch.Generator().manual_seed(0)
    many = {
        name: torch.randint(-2, 3, (n,), generator=generator).float() for name, n in [("c", 150), ("d", 77)]
    }
    flat = torch.cat(list(many.values())).tolist()
    order = sorted(range(len(flat)), key=lambda i: (-abs(flat[i]), i))  # plain Python: ties by position
    expected = torch.zeros(len(flat), dtype=torch.bool)
    expected[order[: round(0.4 * len(flat))]] = True
    mask = wagle.top_ratio_mask(many, 0.4)
    assert torch.equal(torch.cat([mask["c"], mask["d"]]), expected)


def test_mask_gradients_zeroes_only_the_masked_out_after_clipping(model):
    mask = wagle.top_ratio_mask(wagle.attribution_scores(model, [token_batch(1)], [token_batch(2)]), 0.1)
    wagle.graddiff_loss(model, token_batch(1), token_batch(2)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    clipped = {name: p.grad.clone() for name, p in model.named_parameters()}
    wagle.mask_gradients(model, mask)
    for name, p in model.named_parameters():
        assert not p.grad[~mask[name]].any()
        assert torch.equal(p.grad[mask[name]], clipped[name][mask[name]])


def _train(model, optimizer, steps: int = 3, mask=None) -> None:
    """GradDiff steps with clipping; mask_gradients by hand when `mask` is given."""
    model.train()
    for step in range(steps):
        wagle.graddiff_loss(model, token_batch(10 + step), padded(20 + step), retain_weight=0.5).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if mask is not None:
            wagle.mask_gradients(model, mask)
        optimizer.step()
        optimizer.zero_grad()


def test_masked_out_weights_stay_bit_identical_under_adamw_with_weight_decay(model):
    mask = wagle.top_ratio_mask(wagle.attribution_scores(model, [token_batch(1)], [token_batch(2)]), 0.2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    wagle.mask_updates(optimizer, model, mask)
    names = {id(p): name for name, p in model.named_parameters()}
    seen = []  # the gradients step() works on, recorded by a pre-hook that runs after wagle's

    def record(optimizer, args, kwargs):
        seen.append({names[id(p)]: p.grad.clone() for g in optimizer.param_groups for p in g["params"]})

    optimizer.register_step_pre_hook(record)
    _train(model, optimizer)
    assert len(seen) == 3
    for grads in seen:
        assert all(not grads[name][~mask[name]].any() for name in mask)
    moved = 0
    for name, p in model.named_parameters():
        assert torch.equal(p[~mask[name]], before[name][~mask[name]])
        moved += int((p[mask[name]] != before[name][mask[name]]).sum())
    assert moved > 0.9 * sum(int(m.sum()) for m in mask.values())


def test_kept_weights_follow_adamw_exactly(model):
    everything = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    twin = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    wagle.mask_updates(optimizer, model, everything)
    _train(model, optimizer)
    _train(twin, torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)  # the moved decay is AdamW's own, bit for bit


def test_mask_updates_is_mask_gradients_inside_the_step(model):
    mask = wagle.top_ratio_mask(wagle.attribution_scores(model, [token_batch(1)], [], method="gradient"), 0.3)
    twin = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    wagle.mask_updates(optimizer, model, mask)
    _train(model, optimizer)
    _train(twin, torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.0), mask=mask)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_graddiff_matches_plain_recomputation(model):
    forget = {"input_ids": token_batch(1), "labels": token_batch(1).masked_fill(token_batch(5) < 30, -100)}
    retain = padded(2)
    got = wagle.graddiff_loss(model, forget, retain, retain_weight=0.7)
    expected = -model(**forget).loss + 0.7 * hf_loss(model, retain)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_npo_matches_plain_recomputation_and_leaves_the_reference_alone(model, tiny_config):
    reference = tiny_moe(tiny_config("qwen3_moe"), seed=1)
    forget, retain = token_batch(1), token_batch(2)
    got = wagle.npo_loss(model, reference, forget, retain, beta=0.1, retain_weight=0.5)
    with torch.no_grad():
        log_ratio = sequence_nll(model, forget) - sequence_nll(reference, forget)
        expected = -(2 / 0.1) * torch.log(torch.sigmoid(0.1 * log_ratio)).mean() + 0.5 * hf_loss(
            model, retain
        )
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-5)
    got.backward()
    assert all(p.grad is None for p in reference.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_npo_at_the_reference_is_gradient_ascent_on_forget_nll(model):
    reference = copy.deepcopy(model).requires_grad_(False)
    forget = token_batch(1)
    params = list(model.parameters())
    loss = wagle.npo_loss(model, reference, forget, token_batch(2), beta=0.1, retain_weight=0.0)
    assert float(loss.detach()) == pytest.approx(2 / 0.1 * math.log(2), rel=1e-6)
    got = torch.autograd.grad(loss, params)
    expected = torch.autograd.grad(-sequence_nll(model, forget).mean(), params)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_npo_steps_lower_the_forget_likelihood(model):
    reference = copy.deepcopy(model).requires_grad_(False)
    forget = token_batch(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with torch.no_grad():
        nll = [float(sequence_nll(model, forget).mean())]
    for _ in range(3):
        wagle.npo_loss(model, reference, forget, token_batch(2), retain_weight=0.0).backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            nll.append(float(sequence_nll(model, forget).mean()))
    assert nll == sorted(nll) and nll[-1] > nll[0]


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match="ratio must be in"):
        wagle.top_ratio_mask({"a": torch.ones(4)}, ratio)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="no scores"):
        wagle.top_ratio_mask({}, 0.5)
    with pytest.raises(ValueError, match="scores of a hold NaN"):
        wagle.top_ratio_mask({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError, match="only empty score tensors"):
        wagle.top_ratio_mask({"a": torch.empty(0), "b": torch.empty(2, 0)}, 0.5)


@pytest.mark.parametrize(
    ("method", "forget", "retain", "message"),
    [
        ("fisher", [token_batch(0)], [token_batch(1)], "method must be one of"),
        ("wagle", [], [token_batch(1)], "forget_batches is empty"),
        ("snip", iter([]), [], "forget_batches is empty"),
        ("gradient", [], [], "forget_batches is empty"),
        ("wagle", [token_batch(0)], iter([]), "retain_batches is empty"),
        ("gradient", [[1, 2, 3]], [], "input_ids tensor or a dict"),
        ("gradient", [{"attention_mask": torch.ones(2, 4)}], [], "needs input_ids"),
        (
            "gradient",
            [{"input_ids": token_batch(0), "attention_mask": torch.zeros(4, 16)}],
            [],
            "no labelled",
        ),
    ],
)
def test_bad_scoring_input_is_refused(method, forget, retain, message, model):
    with pytest.raises(ValueError, match=message):
        wagle.attribution_scores(model, forget, retain, method=method)


def test_bad_gamma_and_frozen_models_are_refused(model):
    with pytest.raises(ValueError, match="gamma must be positive"):
        wagle.attribution_scores(model, [token_batch(0)], [token_batch(1)], gamma=0.0)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        wagle.attribution_scores(model, [token_batch(0)], [token_batch(1)])


def test_bad_masks_and_optimizers_are_refused(model):
    good = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match="not a parameter of the model"):
        wagle.mask_gradients(model, {"nowhere.weight": torch.ones(3, dtype=torch.bool)})
    name = next(iter(good))
    with pytest.raises(ValueError, match=f"the mask of {name} must be bool"):
        wagle.mask_gradients(model, {name: good[name].float()})
    with pytest.raises(ValueError, match="through the gradient"):
        wagle.mask_updates(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01), model, good)
    wagle.mask_updates(torch.optim.SGD(model.parameters(), lr=0.1), model, good)  # no decay: fine
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.01)
    wagle.mask_updates(optimizer, model, good)
    with pytest.raises(ValueError, match="already applied"):
        wagle.mask_updates(optimizer, model, good)
    stepped = torch.optim.AdamW(model.parameters())
    hf_loss(model, token_batch(0)).backward()
    stepped.step()
    with pytest.raises(ValueError, match="not stepped yet"):
        wagle.mask_updates(stepped, model, good)


def test_bad_loss_arguments_are_refused(model):
    reference = copy.deepcopy(model)
    forget, retain = token_batch(0), token_batch(1)
    with pytest.raises(ValueError, match="beta must be positive"):
        wagle.npo_loss(model, reference, forget, retain, beta=0.0)
    with pytest.raises(ValueError, match="not the model itself"):
        wagle.npo_loss(model, model, forget, retain)
    with pytest.raises(ValueError, match="retain_weight must be >= 0"):
        wagle.npo_loss(model, reference, forget, retain, retain_weight=-1.0)
    with pytest.raises(ValueError, match="retain_weight must be >= 0"):
        wagle.graddiff_loss(model, forget, retain, retain_weight=float("nan"))
