"""The safetensors files of a checkpoint as both checkpoint readers (and so load and write_store)
take them. A tensor name in two files is refused, naming the tensor and both files (the later
file used to win silently), with and without a shard index (the index maps each name to one
file, but the files it names may still both hold it). A file that is not valid safetensors is
refused by name instead of with the parser's bare message."""

import json

import pytest
import torch
from safetensors.torch import save_file

from moeweave.formats.hf_checkpoint import Checkpoint
from moeweave.models import load
from moeweave.store import write_store
from moeweave.store.checkpoint import ExpertCheckpoint

READERS = {
    "Checkpoint": Checkpoint,
    "ExpertCheckpoint": ExpertCheckpoint,
    "load": load,
    "write_store": lambda directory: write_store(directory, directory.parent / "store", progress=False),
}


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_tensor_in_two_files_is_refused(tmp_path, reader, indexed):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    save_file({"model.norm.weight": torch.zeros(4), "a.weight": torch.zeros(1)}, checkpoint / "a.safetensors")
    save_file({"model.norm.weight": torch.ones(4), "b.weight": torch.zeros(1)}, checkpoint / "b.safetensors")
    if indexed:
        weight_map = {
            "model.norm.weight": "b.safetensors",
            "a.weight": "a.safetensors",
            "b.weight": "b.safetensors",
        }
        (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(
        ValueError,
        match=r"tensor 'model.norm.weight' is in both .*/checkpoint/a.safetensors and .*/checkpoint/b.safetensors",
    ):
        READERS[reader](checkpoint)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("reader", [Checkpoint, ExpertCheckpoint])
def test_a_file_that_is_not_safetensors_is_named(tmp_path, reader):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ValueError, match=r"model.safetensors: not a valid safetensors file"):
        reader(tmp_path)
