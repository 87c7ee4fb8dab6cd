"""Finding the weights and config of a Hugging Face checkpoint directory. Safetensors only:
pickle weights (.bin, .pt, ...) are refused, because unpickling runs arbitrary code. With a shard
index, exactly the shards it names are used (Mistral repos also ship a consolidated.safetensors
in their own naming beside them). Every file read lies inside the directory (formats/paths.py):
a shard index naming `../x` or `/x`, or a symlink out of the directory, is refused."""

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from moeweave.formats.paths import confined

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SHARD_INDEX = "model.safetensors.index.json"


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files, resolved; ValueError when it has none (naming any
    pickles) or when one lies outside the directory."""
    index = directory / SHARD_INDEX
    if index.exists() or index.is_symlink():
        weight_map = read_json(directory, SHARD_INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: 'weight_map' must be an object {{tensor name: file name}}")
        files = {confined(directory, name, f"{index}: weight_map") for name in weight_map.values()}
    else:
        files = {confined(directory, path.name, str(directory)) for path in directory.glob("*.safetensors")}
    if files:
        return sorted(files)
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{directory}: holds only pickle weights ({', '.join(pickles)}); moeweave never unpickles "
            "(it can run arbitrary code). Convert the checkpoint to safetensors first."
        )
    raise ValueError(f"{directory}: no *.safetensors files")


def read_config(directory: Path) -> dict:
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory / 'config.json'}: missing; a Hugging Face checkpoint needs its config")
    return read_json(directory, "config.json")


def read_json(directory: Path, name: str) -> dict:
    """The JSON object in directory/name, which must lie inside the directory."""
    path = confined(directory, name, str(directory))
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{directory / name}: not a UTF-8 JSON file ({error})") from None
    if not isinstance(body, dict):
        raise ValueError(f"{directory / name}: must hold a JSON object, got {type(body).__name__}")
    return body


def open_safetensors(path: Path):
    """safe_open(path) for torch tensors; a file that is not valid safetensors (truncated, not
    safetensors at all) raises ValueError naming it."""
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise ValueError(f"{path}: not a valid safetensors file ({error})") from None
