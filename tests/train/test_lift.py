"""LIFT (moeweave.train.lift): principal masks against a numpy SVD, exact counts, largest (not
smallest) magnitudes; SparseAdamW's masked entries against torch.optim.AdamW on those entries alone,
unmasked entries bit-identical, state of length k, the mask refresh's remap, defaults on a
transformers MoE model (fused experts one mask per expert, embeddings and LM head left out), errors."""

import copy

import numpy as np
import pytest
import torch
from tiny_moe import tiny_moe, token_batch

from moeweave.train import lift


def _numpy_mask(w: torch.Tensor, rank: int, k: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
    approx = np.abs((u[:, :rank] * s[:rank]) @ vh[:rank]).ravel()
    mask = np.zeros(approx.size, dtype=bool)
    mask[np.argsort(-approx, kind="stable")[:k]] = True
    return mask.reshape(w.shape)


@pytest.mark.parametrize("shape", [(24, 40), (33, 17), (1, 9)])
@pytest.mark.parametrize("rank", [1, 4, 64])
def test_mask_is_the_top_k_of_the_rank_r_approximation(shape, rank):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(rank))
    k = shape[0] * shape[1] // 7 + 1
    mask = lift.principal_mask(w, rank, k)
    assert mask.dtype == torch.bool and mask.shape == w.shape and int(mask.sum()) == k
    np.testing.assert_array_equal(mask.numpy(), _numpy_mask(w, min(rank, *shape), k))


def test_mask_takes_the_largest_magnitudes():
    w = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    approx = ((u[:, :3] * s[:3]) @ vh[:3]).abs()
    mask = lift.principal_mask(w, 3, 50)
    assert approx[mask].min() > approx[~mask].max()


def test_randomized_svd_finds_the_same_mask_on_a_low_rank_matrix():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 5, generator=g) @ torch.randn(5, 48, generator=g)  # rank 5 exactly
    torch.manual_seed(0)
    assert torch.equal(lift.principal_mask(w, 5, 300, svd="randomized"), lift.principal_mask(w, 5, 300))


def test_lora_equivalent_k():
    assert lift.lora_equivalent_k((4096, 11008), 16) == (4096 + 11008) * 16
    assert lift.lora_equivalent_k((8, 8), 16) == 64


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(11, 12), torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Linear(16, 11)
    )


def _loss(model, seed: int) -> torch.Tensor:
    ids = torch.randint(0, 11, (8,), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.cross_entropy(model(ids), ids.roll(1))


def test_masked_entries_follow_adamw_and_the_rest_never_move():
    model = _small_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = lift.SparseAdamW(
        model, rank=3, k=40, lr=1e-2, weight_decay=0.1, svd="exact", update_interval=100
    )
    targets = ["1.weight", "3.weight"]
    assert sorted(name for name, p in model.named_parameters() if p.requires_grad) == targets
    named = dict(model.named_parameters())
    masks = {name: lift.principal_mask(named[name], 3, 40) for name in targets}
    # The oracle: torch's own AdamW on a parameter holding just the masked entries.
    shadows = {name: torch.nn.Parameter(named[name].detach()[masks[name]].clone()) for name in targets}
    reference = torch.optim.AdamW(list(shadows.values()), lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(4):
        _loss(model, step).backward()
        for name in targets:
            shadows[name].grad = named[name].grad[masks[name]].clone()
        optimizer.step()
        reference.step()
        optimizer.zero_grad()
        reference.zero_grad()
    for name, parameter in model.named_parameters():
        if name not in targets:
            assert torch.equal(parameter, before[name]), name
            continue
        mask = masks[name]
        assert torch.equal(parameter.detach()[~mask], before[name][~mask]), name
        torch.testing.assert_close(parameter.detach()[mask], shadows[name].detach(), rtol=0, atol=1e-7)
        state = optimizer.state[parameter]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == state["indices"].shape == (40,)
    assert optimizer.state_bytes() == 2 * 40 * (4 + 4 + 4)


def _ramp_layer() -> torch.nn.Module:
    """A 5 x 6 linear layer whose weight is 0, 1/30, ..., 29/30: entry i is the i-th smallest."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(30.0).view(5, 6) / 30)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_resumes_the_same_run(dtype):
    """A reloaded optimizer keeps integer indices and fp32 moments (torch's load would cast them to
    the parameter's dtype) and continues exactly as the uninterrupted one."""
    torch.manual_seed(3)
    model = _small_model().to(dtype)
    resumed = copy.deepcopy(model)
    optimizer = lift.SparseAdamW(model, rank=3, k=40, lr=1e-2, svd="exact", update_interval=3)
    _loss(model, 0).backward()
    optimizer.step()
    optimizer.zero_grad()
    resumed.load_state_dict(model.state_dict())
    reloaded = lift.SparseAdamW(resumed, rank=3, k=40, lr=1e-2, svd="exact", update_interval=3)
    reloaded.load_state_dict(optimizer.state_dict())
    for state in reloaded.state.values():
        assert state["indices"].dtype == torch.int32 and state["exp_avg"].dtype == torch.float32
    for step in range(1, 5):  # across a mask refresh
        for m, o in ((model, optimizer), (resumed, reloaded)):
            _loss(m, step).backward()
            o.step()
            o.zero_grad()
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_refresh_keeps_the_moments_of_kept_entries_and_zeroes_new_ones():
    model = _ramp_layer()
    optimizer = lift.SparseAdamW(model, rank=5, k=10, lr=0.0, svd="exact", update_interval=2)
    weight = model[0].weight
    state = optimizer.state[weight]
    assert state["indices"].tolist() == list(range(20, 30))  # the largest entries (rank 5 = W itself)
    state["exp_avg"] = torch.arange(20.0, 30.0)
    state["exp_avg_sq"] = torch.arange(20.0, 30.0) ** 2
    with torch.no_grad():
        weight.view(-1)[[0, 1]] = 5.0  # two new principal entries push out the smallest kept, 20 and 21
    optimizer.refresh_mask(weight)
    assert state["indices"].tolist() == [0, 1, *range(22, 30)]
    assert state["exp_avg"].tolist() == [0.0, 0.0] + [float(i) for i in range(22, 30)]
    assert state["exp_avg_sq"].tolist() == [0.0, 0.0] + [float(i * i) for i in range(22, 30)]


def test_refresh_runs_every_interval_without_resetting_the_step_count():
    model = _ramp_layer()
    optimizer = lift.SparseAdamW(model, rank=5, k=4, lr=0.5, svd="exact", update_interval=2)
    weight = model[0].weight
    assert 0 not in optimizer.state[weight]["indices"].tolist()
    for _ in range(2):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    with torch.no_grad():
        weight.view(-1)[0] = 100.0  # entry 0 becomes principal at the refresh before step 3
    weight.grad = torch.full_like(weight, 2.0)
    expected = 100.0 - 0.5 * ((1 - 0.9) * 2.0 / (1 - 0.9**3)) / (
        ((1 - 0.999) * 4.0) ** 0.5 / (1 - 0.999**3) ** 0.5 + 1e-8
    )  # fresh moments, bias correction of step 3
    optimizer.step()
    assert optimizer.state[weight]["step"] == 3
    assert float(weight.detach()[0, 0]) == pytest.approx(expected, rel=1e-6)


def test_defaults_on_a_transformers_moe_model(tiny_config):
    model = tiny_moe(tiny_config("qwen3_moe"))
    optimizer = lift.SparseAdamW(model, rank=4, lora_rank=2, lr=1e-3)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == set(lift.default_targets(model))
    assert not any("embed_tokens" in name or "lm_head" in name or "norm" in name for name in trained)
    experts = model.get_submodule("model.layers.0.mlp.experts").gate_up_proj  # [E, 2I, H]
    per_expert = lift.lora_equivalent_k(tuple(experts.shape[1:]), 2)
    indices = optimizer.state[experts]["indices"].long()
    assert len(indices) == experts.shape[0] * per_expert
    size = experts.shape[1] * experts.shape[2]
    assert (
        torch.bincount(indices // size, minlength=experts.shape[0]).tolist()
        == [per_expert] * experts.shape[0]
    )
    ids = token_batch(0)
    before = float(model(ids, labels=ids).loss.detach())
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(model(ids, labels=ids).loss.detach()) < before


def test_defaults_leave_out_embeddings_convolutions_and_tied_heads():
    model = torch.nn.Sequential(
        torch.nn.Embedding(5, 8), torch.nn.Conv1d(8, 8, 3), torch.nn.Linear(8, 8), torch.nn.Linear(8, 5)
    )
    model[3].weight = model[0].weight  # an LM head tied to the embedding
    assert lift.default_targets(model) == ["2.weight"]


def test_bad_input_is_named():
    model = _small_model()
    with pytest.raises(ValueError, match="needs a 2-D weight"):
        lift.principal_mask(torch.ones(2, 3, 4), 1, 1)
    with pytest.raises(ValueError, match=r"k = 13 must be in \[1, 12\]"):
        lift.principal_mask(torch.ones(3, 4), 1, 13)
    with pytest.raises(ValueError, match="exactly one of k, density, lora_rank"):
        lift.SparseAdamW(model, k=3, density=0.1)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        lift.SparseAdamW(model, density=1.5)
    with pytest.raises(ValueError, match="are not parameters"):
        lift.SparseAdamW(model, k=3, targets=["9.weight"])
    with pytest.raises(ValueError, match="must be matrices"):
        lift.SparseAdamW(model, k=3, targets=["1.bias"])
    with pytest.raises(ValueError, match=r"k = 1000 must be in \[1, 192\]"):
        lift.SparseAdamW(model, k=1000)
