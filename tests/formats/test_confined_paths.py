"""Nothing is read from outside the checkpoint directory the user named: a shard index naming
`../x` or an absolute path, and a weight, config or index file that is a symlink leading out, are
refused by every reader (the shared finder, the checkpoint reader and its expert view, load and
write_store) before anything is opened or written. Symlinks that stay inside are followed."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from moeweave.formats.hf_checkpoint import Checkpoint, read_config, safetensors_files
from moeweave.models import load
from moeweave.store import write_store
from moeweave.store.checkpoint import ExpertCheckpoint

READERS = {
    "read_config": read_config,
    "safetensors_files": safetensors_files,
    "Checkpoint": Checkpoint,
    "ExpertCheckpoint": ExpertCheckpoint,
    "load": load,
    "write_store": lambda directory: write_store(directory, directory.parent / "store", progress=False),
}


@pytest.fixture
def layout(tmp_path):
    """(checkpoint directory, a directory beside it): both hold config.json and model.safetensors."""
    for name in ("checkpoint", "elsewhere"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
        save_file({f"{name}.weight": torch.zeros(2)}, tmp_path / name / "model.safetensors")
    return tmp_path / "checkpoint", tmp_path / "elsewhere"


def write_index(directory, file_name):
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x.weight": file_name}})
    )


def escapes(layout, how):
    checkpoint, elsewhere = layout
    if how == "index ../":
        write_index(checkpoint, "../elsewhere/model.safetensors")
    elif how == "index absolute":
        write_index(checkpoint, str(elsewhere / "model.safetensors"))
    elif how == "symlinked index":
        write_index(elsewhere, "model.safetensors")
        os.symlink(elsewhere / "model.safetensors.index.json", checkpoint / "model.safetensors.index.json")
    elif how == "symlinked shard":
        (checkpoint / "model.safetensors").unlink()
        os.symlink("../elsewhere/model.safetensors", checkpoint / "model.safetensors")
    elif how == "symlinked config":
        (checkpoint / "config.json").unlink()
        os.symlink(elsewhere / "config.json", checkpoint / "config.json")
    return checkpoint


HOW = ["index ../", "index absolute", "symlinked index", "symlinked shard", "symlinked config"]
# Each reader meets each escape in a file it reads: read_config reads only the config,
# safetensors_files everything but the config, the others everything.
CASES = [
    (how, reader)
    for how in HOW
    for reader in sorted(READERS)
    if {"read_config": how == "symlinked config", "safetensors_files": how != "symlinked config"}.get(
        reader, True
    )
]


@pytest.mark.parametrize(("how", "reader"), CASES)
def test_paths_leading_out_are_refused(layout, how, reader):
    checkpoint = escapes(layout, how)
    with pytest.raises(
        ValueError, match=r"resolves to .*/elsewhere/.*, outside .*/checkpoint; only files inside"
    ):
        READERS[reader](checkpoint)
    assert not (checkpoint.parent / "store").exists()


def test_symlinks_inside_the_directory_are_followed(layout):
    checkpoint, _ = layout
    (checkpoint / "shards").mkdir()
    (checkpoint / "model.safetensors").rename(checkpoint / "shards" / "real.safetensors")
    os.symlink("shards/real.safetensors", checkpoint / "model.safetensors")
    assert safetensors_files(checkpoint) == [(checkpoint / "shards" / "real.safetensors").resolve()]
    write_index(checkpoint, "shards/../model.safetensors")
    assert safetensors_files(checkpoint) == [(checkpoint / "shards" / "real.safetensors").resolve()]
    assert read_config(checkpoint) == {"model_type": "qwen3_moe"}
