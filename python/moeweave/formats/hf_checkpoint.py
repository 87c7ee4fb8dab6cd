"""Finding the weights and config of a Hugging Face checkpoint directory. Safetensors only:
pickle weights (.bin, .pt, ...) are refused, because unpickling runs arbitrary code. With a shard
index, exactly the shards it names are used (Mistral repos also ship a consolidated.safetensors
in their own naming beside them)."""

import json
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files; ValueError when it has none (naming any pickles)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({directory / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{directory}: holds only pickle weights ({', '.join(pickles)}); moeweave never unpickles "
            "(it can run arbitrary code). Convert the checkpoint to safetensors first."
        )
    raise ValueError(f"{directory}: no *.safetensors files")


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing; a Hugging Face checkpoint needs its config")
    return json.loads(path.read_text())
