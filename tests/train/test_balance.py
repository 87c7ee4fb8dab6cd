"""ALF-LB (moeweave.train.balance) on transformers' own MoE models: with a zero bias the model is
transformers' bit for bit; the bias changes which experts are chosen, never the gate weights
(plain-torch recomputation from the router logits); counts and bias updates against a plain-torch
recomputation of the routing; balancing lowers MaxVio; DeepSeek-V3's group-limited routing with
transformers' masked-group fill; detach; two gloo ranks end with identical biases; bad input."""

import pytest
import torch
import torch.nn.functional as F
from tiny_moe import plain_choice, router_inputs, tiny_moe, token_batch, v3_choice

from moeweave.train import balance

SOFTMAX = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]
ALL = [*SOFTMAX, "deepseek_v2", "deepseek_v3"]


@pytest.mark.parametrize("name", ALL)
def test_zero_bias_is_transformers_bit_for_bit_and_detach_restores(name, tiny_config):
    model = tiny_moe(tiny_config(name))
    ids = token_batch(0)
    with torch.no_grad():
        expected = model(ids).logits
        balancer = balance.attach(model)
        assert torch.equal(model(ids).logits, expected)
        for bias in balancer.biases:
            bias.normal_(0, 1.0)
        assert not torch.equal(model(ids).logits, expected)
        balancer.detach()
        assert torch.equal(model(ids).logits, expected)


@pytest.mark.parametrize("name", [*SOFTMAX, "deepseek_v2"])
def test_bias_chooses_but_never_weighs(name, tiny_config):
    model = tiny_moe(tiny_config(name))
    balancer = balance.attach(model)
    h = router_inputs(model, token_batch(1))[0]
    router, bias = balancer.routers[0], balancer.biases[0]
    bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)) * 2)
    with torch.no_grad():
        _, weights, indices = router(h)
    torch.testing.assert_close(indices, plain_choice(router, h, bias), rtol=0, atol=0)
    probs = F.softmax(h.float() @ router.weight.float().t(), dim=-1).gather(1, indices)  # unbiased
    if name == "deepseek_v2":
        probs = probs * router.routed_scaling_factor
    elif getattr(router, "norm_topk_prob", True):
        probs = probs / probs.sum(-1, keepdim=True)
    torch.testing.assert_close(
        weights.float(), probs, rtol=1e-2 if weights.dtype != torch.float32 else 1e-6, atol=0
    )
    bias.zero_()
    bias[3] = 100.0  # expert 3 is chosen by every token, with its unbiased weight
    with torch.no_grad():
        _, _, indices = router(h)
    assert (indices == 3).any(-1).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("rule", balance.RULES)
def test_counts_and_updates_match_plain_torch(name, rule, tiny_config):
    model = tiny_moe(tiny_config(name))
    balancer = balance.attach(model, rule=rule, rate=0.01, decay_steps=2)
    for step in range(3):
        before = [b.clone() for b in balancer.biases]
        inputs = router_inputs(model, token_batch(10 + step))  # a forward: counted
        counts = torch.stack(
            [
                torch.bincount(plain_choice(router, h, bias).flatten(), minlength=router.num_experts).double()
                for router, h, bias in zip(balancer.routers, inputs, before, strict=True)
            ]
        )  # [L, E]
        mean = counts.mean(-1, keepdim=True)
        if rule == "linear":
            change = 0.01 * (mean - counts) / counts.sum(-1, keepdim=True)
        else:
            change = (0.01 / (1 + step / 2) if rule == "decay" else 0.01) * torch.sign(mean - counts)
        balancer.step()
        assert torch.equal(balancer.last_counts, counts)
        for bias, old, delta in zip(balancer.biases, before, change, strict=True):
            torch.testing.assert_close(bias, old + delta.float(), rtol=0, atol=1e-7)
    mean = counts.mean(-1)
    assert balancer.max_vio() == pytest.approx(float(((counts.max(-1).values - mean) / mean).mean()))


@pytest.mark.parametrize(("name", "rate"), [("mixtral", 0.05), ("deepseek_v3", 0.005)])
def test_balancing_lowers_max_vio(name, rate, tiny_config):
    model = tiny_moe(tiny_config(name))
    balancer = balance.attach(model, rule="sign", rate=rate)
    if name == "deepseek_v3":  # start from a bias that crowds two experts (sigmoid scores are in (0, 1))
        for bias in balancer.biases:
            bias[:2] = 0.3
    eval_batches = [token_batch(100 + i, batch=16) for i in range(2)]
    before = balancer.max_vio(eval_batches)
    with torch.no_grad():
        for step in range(80):
            model(token_batch(step, batch=8))
            balancer.step()
    after = balancer.max_vio(eval_batches)
    assert after < 0.5 * before, (before, after)


def test_deepseek_v3_keeps_transformers_masked_group_fill(tiny_config):
    """With every biased score negative, a 0.0 fill of the masked groups would choose experts
    outside the kept groups; transformers fills with -inf, and the balancer counts what it chose."""
    model = tiny_moe(tiny_config("deepseek_v3", num_experts_per_tok=3, topk_group=2))
    balancer = balance.attach(model)
    h = router_inputs(model, token_batch(2))[0]
    router = balancer.routers[0]
    balancer.biases[0].fill_(-10.0)
    balancer.counts.zero_()
    with torch.no_grad():
        _, weights, indices = router(h)
    kept = torch.isfinite(v3_choice(router, (h.float() @ router.weight.float().t()).sigmoid() - 10.0))
    assert kept.gather(1, indices).all()
    scores = (h.float() @ router.weight.float().t()).sigmoid().gather(1, indices)  # unbiased
    expected = scores / (scores.sum(-1, keepdim=True) + 1e-20) if router.norm_topk_prob else scores
    torch.testing.assert_close(weights, expected * router.routed_scaling_factor)
    assert torch.equal(
        balancer.counts[0], torch.bincount(indices.flatten(), minlength=router.num_experts).double()
    )


def test_bad_input_is_named(tiny_config):
    model = tiny_moe(tiny_config("mixtral"))
    with pytest.raises(ValueError, match="rule must be one of"):
        balance.attach(model, rule="aux")
    with pytest.raises(ValueError, match="rate must be positive"):
        balance.attach(model, rate=0.0)
    balancer = balance.attach(model)
    with pytest.raises(RuntimeError, match="before any forward"):
        balancer.step()
    with pytest.raises(RuntimeError, match="needs a step"):
        balancer.max_vio()
    dense = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="has no MoE router"):
        balance.attach(dense)


def _rank(rank: int, config: dict, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = tiny_moe(config)
    balancer = balance.attach(model, rate=0.01)
    with torch.no_grad():
        for step in range(3):
            model(token_batch(1000 * rank + step))  # different data on each rank
            balancer.step()
    torch.save([b.clone() for b in balancer.biases], f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_biases(tiny_config, tmp_path):
    config = tiny_config("qwen3_moe")
    out = str(tmp_path / "biases")
    torch.multiprocessing.start_processes(
        _rank, args=(config, str(tmp_path / "init"), out), nprocs=2, start_method="spawn"
    )
    first, second = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert any(a.abs().sum() > 0 for a in first)
