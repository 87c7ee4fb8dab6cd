"""Bad checkpoints give clear errors naming the file or tensor."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeweave.models import load


def _copy(checkpoint, tmp_path):
    _, path = checkpoint
    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_unknown_architecture(checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture 'llama'"):
        load(path)


def _edit_weights(checkpoint, tmp_path, edit):
    path = _copy(checkpoint, tmp_path)
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")
    return path


def test_missing_tensor(checkpoint, tmp_path):
    path = _edit_weights(checkpoint, tmp_path, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.norm\.weight'"):
        load(path)


def test_extra_tensor(checkpoint, tmp_path):
    path = _edit_weights(
        checkpoint, tmp_path, lambda t: t.update({"model.layers.0.surprise.weight": torch.zeros(3)})
    )
    with pytest.raises(ValueError, match=r"does not use: model\.layers\.0\.surprise\.weight"):
        load(path)


def test_shape_mismatch(checkpoint, tmp_path):
    path = _edit_weights(checkpoint, tmp_path, lambda t: t.update({"model.norm.weight": torch.zeros(5)}))
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' .* has shape \[5\], expected \[64\]"):
        load(path)


def test_pickle_only_checkpoint_is_refused(checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path)
    (path / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickle weights"):
        load(path)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint directory .*nowhere does not exist"):
        load(tmp_path / "nowhere")
