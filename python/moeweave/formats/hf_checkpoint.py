"""Reading a Hugging Face checkpoint directory: its config and weights. Safetensors only:
pickle weights (.bin, .pt, ...) are refused, because unpickling runs arbitrary code. With a shard
index, exactly the shards it names are used (Mistral repos also ship a consolidated.safetensors
in their own naming beside them). Every file read lies inside the directory (formats/paths.py):
a shard index naming `../x` or `/x`, or a symlink out of the directory, is refused."""

import contextlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from moeweave.formats.paths import confined
from moeweave.quant.finite import require_finite

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SHARD_INDEX = "model.safetensors.index.json"


def checkpoint_directory(path: str | Path) -> Path:
    """path, which must be an existing directory (FileNotFoundError saying which it is not)."""
    path = Path(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise FileNotFoundError(f"checkpoint directory {path} {what}")
    return path


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


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file, as stored: every tensor's name, dtype, shape and
    byte offsets."""
    with open(path, "rb") as f:
        return f.read(int.from_bytes(f.read(8), "little"))


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


class Checkpoint:
    """The one reader of a checkpoint directory: its config and its safetensors tensors by name,
    each read on demand (safetensors maps the files). A tensor name in two files (which one is
    meant?) and a NaN or infinity in a tensor read (it would spread through every output or be
    quantised into garbage without a word) are refused. Records the tensors taken, so a loader
    can report the ones it never used. Use as a context manager, or close()."""

    def __init__(self, directory: str | Path):
        self.directory = checkpoint_directory(directory)
        self.config = read_config(self.directory)
        self.architecture = self.config.get("model_type", "unknown")
        self._stack = contextlib.ExitStack()
        self._handles = {}  # tensor name -> safe_open handle of its file
        self._files: dict[str, Path] = {}  # tensor name -> file
        for path in safetensors_files(self.directory):
            handle = self._stack.enter_context(open_safetensors(path))
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in self._files:
                    raise ValueError(
                        f"{self.directory}: tensor {name!r} is in both {self._files[name]} and {path}"
                    )
                self._files[name], self._handles[name] = path, handle
        self.taken: set[str] = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self._files)

    def file_of(self, name: str) -> Path:
        return self._files[name]

    def shape(self, name: str) -> list[int]:
        return self._handles[name].get_slice(name).get_shape()

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, checked for NaN/inf."""
        tensor = self._handles[name].get_tensor(name)
        require_finite(tensor, name)
        return tensor

    def tensor_slice(self, name: str, index: int) -> torch.Tensor:
        """tensor(name)[index], reading only that slice."""
        tensor = self._handles[name].get_slice(name)[index]
        require_finite(tensor, name, at=(index,))
        return tensor

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `name`, checked against the expected shape and for NaN/inf, and marked taken."""
        if name not in self._files:
            raise ValueError(f"checkpoint {self.directory} is missing tensor {name!r}")
        if tuple(self.shape(name)) != tuple(shape):
            raise ValueError(
                f"tensor {name!r} in {self.directory} has shape {self.shape(name)}, expected {list(shape)}"
            )
        self.taken.add(name)
        return self.tensor(name)

    def untaken(self) -> list[str]:
        return sorted(set(self._files) - self.taken)
