"""load()'s projection formats: the default follows the experts (INT8 projections when they are
quantised), and dense_bytes_per_token counts what a decode step reads outside the routed
experts, against a count taken straight from the checkpoint file."""

import pytest
import torch
from dense_bytes import expected_dense_bytes
from safetensors.torch import load_file

from moeweave.models import load
from moeweave.quant import QuantizedWeight


@pytest.mark.parametrize(("experts", "bits"), [("int4", 8), ("int2", 8), ("bf16", None), ("fp32", None)])
def test_quantised_experts_default_to_int8_projections(checkpoint, experts, bits):
    _, path = checkpoint
    q = load(path, experts=experts).layers[0].attention
    w = q.q if hasattr(q, "q") and q.q is not None else q.kv_a
    assert (w.bits if isinstance(w, QuantizedWeight) else None) == bits


def test_an_explicit_projection_format_wins(checkpoint):
    _, path = checkpoint
    model = load(path, experts="int4", projections="float")
    assert isinstance(model.lm_head, torch.Tensor)
    assert load(path, experts="bf16", projections="int4").lm_head.bits == 4


def test_unknown_projection_format_is_refused(checkpoint):
    _, path = checkpoint
    with pytest.raises(ValueError, match="projections must be one of"):
        load(path, projections="int3")


@pytest.mark.parametrize("projections", ["float", "int8", "int4"])
def test_dense_bytes_per_token_counts_the_checkpoint_outside_experts(checkpoint, projections):
    _, path = checkpoint
    expected = expected_dense_bytes(load_file(path / "model.safetensors"), projections, torch.float32)
    model = load(path, experts="int4", dtype=torch.float32, projections=projections)
    assert model.dense_bytes_per_token() == expected
