"""A Hugging Face safetensors checkpoint seen as experts plus dense weights, read one tensor at a
time (safetensors maps the files; only the tensors asked for are copied into memory).

Expert layouts on disk (transformers 5 fuses experts in memory but writes these):
  Mixtral             model.layers.L.block_sparse_moe.experts.E.{w1,w3,w2}.weight  (gate, up, down)
  Qwen2/3-MoE, OLMoE, model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight
  DeepSeek-V2/V3
  GPT-OSS             model.layers.L.mlp.experts.gate_up_proj [E, H, 2I] (gate and up interleaved
                      along the last dim: gate = [..., 0::2], up = [..., 1::2]), gate_up_proj_bias
                      [E, 2I] (interleaved the same way), down_proj [E, I, H], down_proj_bias [E, H];
                      these are x @ W forms, transposed here to the [out, in] form of the others.
Shared experts (Qwen2-MoE's shared_expert, DeepSeek's shared_experts) run for every token, so
they stay with the dense weights. Pickle checkpoints are refused: loading one runs arbitrary code.
So are a tensor name in two files (which one is meant?) and a NaN or infinity in a tensor read
(it would be quantised into garbage without a word).
"""

import contextlib
import re
from pathlib import Path

import torch

from moeweave.formats.hf_checkpoint import open_safetensors, read_config, safetensors_files
from moeweave.quant.finite import require_finite

_PER_EXPERT = [
    (re.compile(r"^(?:.*\.)?layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w3|w2)\.weight$"),
     {"w1": "gate", "w3": "up", "w2": "down"}),
    (re.compile(r"^(?:.*\.)?layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$"),
     {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}),
]  # fmt: skip
_FUSED = re.compile(
    r"^(?:.*\.)?layers\.(\d+)\.mlp\.experts\.(gate_up_proj|gate_up_proj_bias|down_proj|down_proj_bias)$"
)
_EXPERT_LIKE = re.compile(r"\.experts\.")
_FUSED_ARCHITECTURES = ("gpt_oss",)


class Checkpoint:
    """Index of a checkpoint directory; use as a context manager (it holds the files open)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        files = safetensors_files(self.directory)
        self.config = read_config(self.directory)
        self.architecture = self.config.get("model_type", "unknown")

        self._stack = contextlib.ExitStack()
        self._handles = {}
        self._location: dict[str, Path] = {}  # tensor name -> file
        self.expert_names: dict[tuple[int, int], dict[str, str]] = {}  # (L, E) -> projection -> name
        self.fused_names: dict[int, dict[str, str]] = {}  # L -> kind -> name (GPT-OSS)
        self._fused_experts: set[tuple[int, int]] = set()
        self.dense_names: list[str] = []
        for path in files:
            handle = self._stack.enter_context(open_safetensors(path))
            self._handles[path] = handle
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in self._location:
                    raise ValueError(
                        f"{self.directory}: tensor {name!r} is in both {self._location[name]} and {path}"
                    )
                self._location[name] = path
                self._classify(name)
        for layer, kinds in self.fused_names.items():
            missing = {"gate_up_proj", "down_proj"} - set(kinds)
            if missing:
                raise ValueError(
                    f"{self.directory}: layer {layer} lacks fused expert tensors {sorted(missing)}"
                )
            self._fused_experts.update((layer, e) for e in range(self._shape(kinds["gate_up_proj"])[0]))
        for (layer, e), names in self.expert_names.items():
            if set(names) != {"gate", "up", "down"}:
                raise ValueError(
                    f"{self.directory}: layer {layer} expert {e} has only {sorted(names)} of gate, up, down"
                )

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _classify(self, name: str) -> None:
        for pattern, projections in _PER_EXPERT:
            match = pattern.match(name)
            if match:
                key = (int(match.group(1)), int(match.group(2)))
                self.expert_names.setdefault(key, {})[projections[match.group(3)]] = name
                return
        match = _FUSED.match(name)
        if match and self.architecture in _FUSED_ARCHITECTURES:
            self.fused_names.setdefault(int(match.group(1)), {})[match.group(2)] = name
            return
        if _EXPERT_LIKE.search(name) and not re.search(r"\.shared_experts?\.", name):
            raise ValueError(
                f"{self._location[name]}: tensor {name!r} looks like an expert weight of a layout the store does "
                f"not know (model_type {self.architecture!r}); save the model with transformers' "
                "save_pretrained (which writes per-expert tensors), and dequantise FP8/MXFP4 checkpoints "
                "to bf16/fp32 first"
            )
        self.dense_names.append(name)

    def _shape(self, name: str) -> list[int]:
        return self._handles[self._location[name]].get_slice(name).get_shape()

    def _tensor(self, name: str) -> torch.Tensor:
        tensor = self._handles[self._location[name]].get_tensor(name)
        require_finite(tensor, name)
        return tensor

    def _expert_slice(self, name: str, e: int) -> torch.Tensor:
        tensor = self._handles[self._location[name]].get_slice(name)[e]
        require_finite(tensor, name, at=(e,))
        return tensor

    def experts(self) -> list[tuple[int, int]]:
        """Every (layer, expert), sorted."""
        return sorted(set(self.expert_names) | self._fused_experts)

    def expert(self, layer: int, e: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """({gate [I, H], up [I, H], down [H, I]}, biases {gate [I], up [I], down [H]} or {})."""
        fused = self.fused_names.get(layer)
        if fused is None:
            names = self.expert_names[(layer, e)]
            return {p: self._tensor(names[p]) for p in ("gate", "up", "down")}, {}
        gate_up = self._expert_slice(fused["gate_up_proj"], e)  # [H, 2I], gate/up interleaved
        weights = {
            "gate": gate_up[:, 0::2].t().contiguous(),  # [I, H]
            "up": gate_up[:, 1::2].t().contiguous(),
            "down": self._expert_slice(fused["down_proj"], e).t().contiguous(),  # [I, H] -> [H, I]
        }
        biases = {}
        if "gate_up_proj_bias" in fused:
            gate_up_bias = self._expert_slice(fused["gate_up_proj_bias"], e)  # [2I]
            biases["gate"], biases["up"] = gate_up_bias[0::2].contiguous(), gate_up_bias[1::2].contiguous()
        if "down_proj_bias" in fused:
            biases["down"] = self._expert_slice(fused["down_proj_bias"], e).contiguous()  # [H]
        return weights, biases

    def dense(self) -> dict[str, torch.Tensor]:
        """Every non-expert tensor, by name (shared experts included)."""
        return {name: self._tensor(name) for name in sorted(self.dense_names)}
