"""Each architecture's checkpoint, as transformers writes it, converts; its experts read back equal
to moeweave.quant.quantize of the tensors the checkpoint names (per-expert layouts), and GPT-OSS's
fused experts compute what transformers' own GptOssExperts computes."""

import pytest
import torch
import transformers
from safetensors.torch import load_file

from moeweave.quant import quantize
from moeweave.store import ExpertStore, write_store

MLP_NAMES = "model.layers.{layer}.mlp.experts.{expert}.{projection}_proj.weight"
PER_EXPERT = {
    "mixtral": ("model.layers.{layer}.block_sparse_moe.experts.{expert}.{w}.weight", {"gate": "w1", "up": "w3", "down": "w2"}),
    "qwen2_moe": (MLP_NAMES, None),
    "qwen3_moe": (MLP_NAMES, None),
    "olmoe": (MLP_NAMES, None),
    "deepseek_v2": (MLP_NAMES, None),
    "deepseek_v3": (MLP_NAMES, None),
}  # fmt: skip
# DeepSeek's first layer is a dense MLP (first_k_dense_replace = 1): experts only in layer 1.
EXPERT_LAYERS = {"deepseek_v2": [1], "deepseek_v3": [1]}


@pytest.mark.parametrize("model_type", sorted(PER_EXPERT))
def test_per_expert_layouts_convert(hf_checkpoint, same_quantized, tmp_path, model_type):
    source = hf_checkpoint(model_type)
    write_store(source, tmp_path, bits={"default": 4, "1.3": 3}, progress=False)
    tensors = load_file(source / "model.safetensors")
    pattern, w_names = PER_EXPERT[model_type]
    layers = EXPERT_LAYERS.get(model_type, [0, 1])
    with ExpertStore(tmp_path) as store:
        assert store.experts() == [(layer, e) for layer in layers for e in range(4)]
        for layer, e in store.experts():
            expert = store.read(layer, e)
            assert expert.biases == {}
            for projection in ("gate", "up", "down"):
                name = pattern.format(
                    layer=layer, expert=e, projection=projection, w=w_names and w_names[projection]
                )
                bits = 3 if (layer, e) == (1, 3) else 4
                same_quantized(
                    getattr(expert, projection), quantize(tensors[name], bits=bits), f"{model_type} {name}"
                )
        dense = store.dense_weights()
    assert not any(".experts." in name for name in dense)
    assert set(dense) == {name for name in tensors if ".experts." not in name}


def test_gpt_oss_fused_experts_compute_like_transformers(hf_checkpoint, tmp_path):
    source = hf_checkpoint("gpt_oss")
    write_store(source, tmp_path, bits=16, progress=False)  # unquantised: compare the arithmetic
    model = transformers.AutoModelForCausalLM.from_pretrained(source)
    torch.manual_seed(2)
    x = torch.randn(5, 64)  # [T, H]
    with ExpertStore(tmp_path) as store, torch.no_grad():
        for layer in range(2):
            experts = model.model.layers[layer].mlp.experts
            for e in range(4):
                want = (
                    experts._apply_gate(x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e])
                    @ experts.down_proj[e]
                    + experts.down_proj_bias[e]
                )
                got_expert = store.read(layer, e)
                w = {p: getattr(got_expert, p).float() for p in ("gate", "up", "down")}
                b = got_expert.biases
                assert set(b) == {"gate", "up", "down"} and b["gate"].dtype == torch.float32
                gate, up = x @ w["gate"].T + b["gate"], x @ w["up"].T + b["up"]  # [T, I] each
                gate_up = torch.stack([gate, up], dim=-1).flatten(-2)  # transformers' interleaving
                got = experts._apply_gate(gate_up) @ w["down"].T + b["down"]
                # The store holds bf16 weights (8 significant bits); the rest is fp32.
                assert torch.allclose(got, want, rtol=0.05, atol=0.05), (layer, e)
                assert not torch.allclose(got, torch.zeros_like(got), atol=0.05)
