"""A tensor name in two safetensors files of one checkpoint is refused by both checkpoint readers
(and so by load and write_store), naming the tensor and both files: the later file used to win
silently. Checked with and without a shard index (the index maps each name to one file, but the
files it names may still both hold it)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from moeweave.models import load
from moeweave.models.checkpoint import Checkpoint as ModelCheckpoint
from moeweave.store import write_store
from moeweave.store.checkpoint import Checkpoint as StoreCheckpoint

READERS = {
    "models.Checkpoint": ModelCheckpoint,
    "store.Checkpoint": StoreCheckpoint,
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
