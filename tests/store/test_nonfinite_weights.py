"""write_store refuses a checkpoint holding a NaN or an infinity, in any tensor it reads: a
quantised expert, an unquantised (bf16) one, a dense weight, GPT-OSS's fused experts and their
biases. The error names the tensor and the first bad index in it, and no store is left behind."""

import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from moeweave.store import write_store

NAN, INF = float("nan"), float("inf")
CASES = [
    # (model_type, tensor, index, value, bits)
    ("qwen3_moe", "model.layers.1.mlp.experts.3.up_proj.weight", (3, 17), NAN, 4),  # the last expert
    ("qwen3_moe", "model.layers.0.mlp.experts.1.down_proj.weight", (60, 0), INF, 16),  # never quantised
    ("qwen3_moe", "model.norm.weight", (5,), -INF, 4),  # dense
    ("gpt_oss", "model.layers.1.mlp.experts.gate_up_proj", (2, 10, 33), NAN, 4),  # fused [E, H, 2I]
    ("gpt_oss", "model.layers.0.mlp.experts.down_proj_bias", (1, 7), INF, 4),  # fused bias [E, H]
]


def with_value(source, target, name, index, value):
    """A copy of checkpoint `source` at `target` whose tensor `name` holds `value` at `index`."""
    shutil.copytree(source, target)
    tensors = load_file(source / "model.safetensors")
    tensors[name][index] = value
    save_file(tensors, target / "model.safetensors")
    return target


@pytest.mark.parametrize(("model_type", "name", "index", "value", "bits"), CASES)
def test_non_finite_weight_is_refused_by_name_and_index(
    hf_checkpoint, tmp_path, model_type, name, index, value, bits
):
    source = with_value(hf_checkpoint(model_type), tmp_path / "checkpoint", name, index, value)
    message = f"{name}: non-finite value {value} at {list(index)}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        write_store(source, tmp_path / "store", bits=bits, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no store, no leftovers
