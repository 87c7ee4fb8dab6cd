"""Checkpoint reads tensors with pread, not through safetensors' mapping: what it returns must
equal safetensors' own reader (the oracle) for every dtype, shape and slice, across shards."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeweave.formats.hf_checkpoint import Checkpoint


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    floats = torch.randn(3, 5, 7, generator=generator)
    return {
        "bf16": floats.bfloat16(),
        "f16": floats[0].half(),
        "f32": floats,
        "f64": floats[1].double(),
        "f8": floats[2].to(torch.float8_e4m3fn),
        "i64": torch.randint(-(2**40), 2**40, (4, 3), generator=generator),
        "i8": torch.randint(-128, 127, (9,), generator=generator, dtype=torch.int8),
        "u8": torch.randint(0, 255, (2, 2), generator=generator, dtype=torch.uint8),
        "bool": torch.rand(6, generator=generator) > 0.5,
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
    }


@pytest.fixture
def sharded(tmp_path):
    """A checkpoint directory whose tensors are split over two shards."""
    tensors = _tensors()
    names = sorted(tensors)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n].contiguous() for n in part}, tmp_path / file)
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    return tmp_path


def test_every_tensor_equals_safetensors_own_reader(sharded):
    expected = {**load_file(sharded / "a.safetensors"), **load_file(sharded / "b.safetensors")}
    with Checkpoint(sharded) as ck:
        assert sorted(ck.names()) == sorted(expected)
        for name, tensor in expected.items():
            got = ck.tensor(name)
            assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
            assert torch.equal(got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
            assert ck.shape(name) == list(tensor.shape)


def test_reads_into_a_reused_buffer(sharded):
    """With a buffer, each tensor is read into the buffer's front (after asking the kernel for it
    ahead), equal to safetensors' own, and a buffer too small for a tensor is refused."""
    expected = {**load_file(sharded / "a.safetensors"), **load_file(sharded / "b.safetensors")}
    buffer = torch.empty(1024, dtype=torch.uint8)
    with Checkpoint(sharded) as ck:
        for name, tensor in expected.items():
            ck.will_need(name)
            got = ck.tensor(name, buffer)
            assert got.numel() == 0 or got.data_ptr() == buffer.data_ptr(), name
            assert torch.equal(got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
            assert ck.nbytes(name) == tensor.numel() * tensor.element_size()
        with pytest.raises(ValueError, match="do not fit a buffer of 8"):
            ck.tensor("f32", buffer[:8])


def test_a_slice_reads_one_index_of_the_first_dimension(sharded):
    expected = _tensors()["f32"]
    with Checkpoint(sharded) as ck:
        for index in range(expected.shape[0]):
            assert torch.equal(ck.tensor_slice("f32", index), expected[index])
        with pytest.raises(IndexError, match="index 3 is outside its first dimension of 3"):
            ck.tensor_slice("f32", 3)


def test_a_truncated_file_is_refused_by_name(tmp_path):
    save_file({"w": torch.ones(64, 64)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        Checkpoint(tmp_path).tensor("w")
