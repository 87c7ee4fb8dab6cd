"""Reading a Hugging Face checkpoint directory for model execution: config.json plus safetensors
weights (moeweave.formats.hf_checkpoint finds them, refuses pickles and files outside the
directory). Tracks which tensors were taken, so unused (extra) tensors can be reported. A tensor
name in two files, or a NaN/inf in a tensor taken, is refused: either would otherwise load
silently (the later file winning, the NaN spreading through every output).
"""

from pathlib import Path

import torch

from moeweave.formats.hf_checkpoint import open_safetensors, read_config, safetensors_files
from moeweave.quant.finite import require_finite


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            what = "is not a directory" if self.path.exists() else "does not exist"
            raise FileNotFoundError(f"checkpoint directory {self.path} {what}")
        self.config = read_config(self.path)
        self._where = {}  # tensor name -> the safe_open handle of its file
        file_of: dict[str, Path] = {}
        for file in safetensors_files(self.path):
            handle = open_safetensors(file)
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in file_of:
                    raise ValueError(
                        f"checkpoint {self.path}: tensor {name!r} is in both {file_of[name]} and {file}"
                    )
                file_of[name], self._where[name] = file, handle
        self.taken: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `name`, checked against the expected shape and for NaN/inf."""
        if name not in self._where:
            raise ValueError(f"checkpoint {self.path} is missing tensor {name!r}")
        tensor = self._where[name].get_tensor(name)
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"tensor {name!r} in {self.path} has shape {list(tensor.shape)}, expected {list(shape)}"
            )
        require_finite(tensor, name)
        self.taken.add(name)
        return tensor

    def untaken(self) -> list[str]:
        return sorted(set(self._where) - self.taken)
