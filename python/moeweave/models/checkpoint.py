"""Reading a Hugging Face checkpoint directory: config.json plus safetensors weights (one file
or shards with an index). Never unpickles: a checkpoint that only has .bin/.pt/.pth weights is
refused. Tracks which tensors were taken, so unused (extra) tensors can be reported.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {self.path}")
        config_path = self.path / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path} is missing: not a Hugging Face checkpoint directory")
        self.config = json.loads(config_path.read_text())
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            pickled = sorted(p.name for p in self.path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if pickled:
                raise ValueError(
                    f"{self.path} holds only pickled weights ({', '.join(pickled)}); moeweave loads safetensors "
                    "only, because unpickling runs arbitrary code. Convert with safetensors first."
                )
            raise FileNotFoundError(f"no *.safetensors weights in {self.path}")
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
