"""The oracle of the model tests: transformers' own model for a checkpoint, optionally with every
expert weight replaced by what moeweave computes with. Shared by tests/models/test_parity.py and the
tests/integrations tests (a helper module, so no test module imports another)."""

import re
import shutil

import torch
import transformers
from safetensors.torch import load_file, save_file

from moeweave.quant import dequantize
from moeweave.quant.policy import quantize_as

EXPERT_TENSOR = re.compile(r"\.experts\.\d+\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")
# The dense projections that load(projections=...) packs: attention (but MLA's kv_b, which
# decode steps absorb per head), dense MLPs, shared experts and the LM head.
PROJECTION_TENSOR = re.compile(
    r"(self_attn\.(q|k|v|o|q_a|q_b)_proj|self_attn\.kv_a_proj_with_mqa|\.mlp\.(gate|up|down)_proj"
    r"|shared_experts?\.(gate|up|down)_proj)\.weight$|^lm_head\.weight$"
)


def oracle(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def oracle_with_experts_as(path, experts, tmp_path):
    """transformers' model with each expert weight replaced by what moeweave computes with:
    bf16-rounded, or quantised exactly as moeweave.models.load does, then dequantised."""
    if experts == "fp32":
        return oracle(path)
    target = tmp_path / f"oracle-{experts}"
    shutil.copytree(path, target)
    tensors = load_file(target / "model.safetensors")
    for name, w in tensors.items():
        if EXPERT_TENSOR.search(name):
            if experts == "bf16":
                tensors[name] = w.bfloat16().float()
            else:
                tensors[name] = dequantize(quantize_as(w, experts))
    save_file(tensors, target / "model.safetensors")
    return oracle(target)
