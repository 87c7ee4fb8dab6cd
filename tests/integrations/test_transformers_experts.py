"""moeweave's fused experts inside transformers (ExpertsInterface): the same model's logits with
experts_implementation="moeweave" against transformers' own eager experts computing with the
same (bf16-rounded or quantised-then-dequantised) expert weights."""

import pytest
import torch
import transformers
from transformers_oracle import oracle as _oracle
from transformers_oracle import oracle_with_experts_as as _oracle_with_experts_as

from moeweave.integrations.transformers import use_moeweave_experts


@pytest.mark.parametrize(("experts", "tolerance"), [("bf16", 2e-2), ("int8", 2e-2), ("int4", 2e-2)])
def test_logits_match_eager_experts(checkpoint, tmp_path, experts, tolerance):
    _, path = checkpoint
    oracle = _oracle_with_experts_as(path, experts, tmp_path)
    model = use_moeweave_experts(_oracle(path), experts=experts)
    assert model.config._experts_implementation == "moeweave"
    ids = torch.randint(2, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = oracle(ids).logits, model(ids).logits
    error = (got - expected).abs().amax(-1) / expected.abs().max()  # per position
    assert int((error >= tolerance).sum()) <= error.numel() // 8, error


def test_generate_runs_on_moeweave_experts(checkpoint):
    _, path = checkpoint
    model = use_moeweave_experts(_oracle(path), experts="bf16")
    with torch.no_grad():
        out = model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert out.shape == (1, 9)


def test_unsupported_expert_layout_is_explained():
    config = transformers.GptOssConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                                       num_experts_per_tok=2, layer_types=["full_attention"])  # fmt: skip
    with pytest.raises(NotImplementedError, match="biased, transposed or interleaved experts"):
        use_moeweave_experts(transformers.GptOssForCausalLM(config))


def test_bad_format_is_refused(checkpoint):
    _, path = checkpoint
    with pytest.raises(ValueError, match="experts must be one of"):
        use_moeweave_experts(_oracle(path), experts="int5")


def test_non_finite_expert_weights_are_refused_by_name(checkpoint):
    _, path = checkpoint
    model = use_moeweave_experts(_oracle(path), experts="int4")
    experts = next(m for m in model.modules() if hasattr(m, "gate_up_proj"))
    inter = experts.down_proj.shape[-1]
    with torch.no_grad():
        experts.gate_up_proj[1, inter + 2, 5] = float("nan")
        with pytest.raises(
            ValueError, match=r"expert 1 up \(gate_up_proj\[1, \d+:\]\): non-finite value nan at \[2, 5\]"
        ):
            model(torch.tensor([[3, 4, 5]]))


def test_transformers_before_5_7_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "5.6.2")
    with pytest.raises(ImportError, match=r"need transformers >= 5.7.*this is 5.6.2"):
        use_moeweave_experts(torch.nn.Linear(1, 1), experts="int4")
