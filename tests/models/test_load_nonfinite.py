"""moeweave.models.load refuses a checkpoint holding a NaN or an infinity (it used to load it, and
the NaN spread through every logit), naming the tensor and the first bad index."""

import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from moeweave.models import load

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("checkpoint", ["qwen3_moe"], indirect=True)
@pytest.mark.parametrize(
    ("name", "index", "value", "projections"),
    [
        ("model.layers.0.mlp.experts.1.up_proj.weight", (3, 17), NAN, "float"),  # an expert
        ("model.layers.2.self_attn.q_proj.weight", (0, 63), INF, "int8"),  # quantised on load
        ("model.norm.weight", (5,), -INF, "float"),
    ],
)
def test_non_finite_weight_is_refused(checkpoint, tmp_path, name, index, value, projections):
    _, source = checkpoint
    path = shutil.copytree(source, tmp_path / "copy")
    tensors = load_file(source / "model.safetensors")
    tensors[name][index] = value
    save_file(tensors, path / "model.safetensors")
    message = f"{name}: non-finite value {value} at {list(index)}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load(path, projections=projections)
