"""Reading a Hugging Face checkpoint directory for model execution: config.json plus safetensors
weights (moeweave.formats.hf_checkpoint finds them and refuses pickles). Tracks which tensors
were taken, so unused (extra) tensors can be reported.
"""

from pathlib import Path

import torch
from safetensors import safe_open

from moeweave.formats.hf_checkpoint import read_config, safetensors_files


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {self.path}")
        self.config = read_config(self.path)
        files = safetensors_files(self.path)
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {name: h for h in self._handles for name in h.keys()}  # noqa: SIM118
        self.taken: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `name`, checked against the expected shape."""
        if name not in self._where:
            raise KeyError(f"checkpoint {self.path} is missing tensor {name!r}")
        tensor = self._where[name].get_tensor(name)
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"tensor {name!r} in {self.path} has shape {list(tensor.shape)}, expected {list(shape)}"
            )
        self.taken.add(name)
        return tensor

    def untaken(self) -> list[str]:
        return sorted(set(self._where) - self.taken)
