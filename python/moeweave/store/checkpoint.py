"""A Hugging Face safetensors checkpoint seen as experts plus dense weights, read one tensor at a
time through moeweave.formats.hf_checkpoint.Checkpoint (safetensors maps the files; only the
tensors asked for are copied into memory). Expert tensor names: moeweave.formats.expert_naming.

GPT-OSS's fused tensors are gate_up_proj [E, H, 2I] (gate and up interleaved along the last dim:
gate = [..., 0::2], up = [..., 1::2]), gate_up_proj_bias [E, 2I] (interleaved the same way),
down_proj [E, I, H], down_proj_bias [E, H]: x @ W forms, transposed here to the [out, in] form of
the others. Shared experts (Qwen2-MoE's shared_expert, DeepSeek's shared_experts) run for every
token, so they stay with the dense weights.
"""

import re
from pathlib import Path

import torch

from moeweave.formats.expert_naming import FUSED_ARCHITECTURES, FUSED_PATTERN, PER_EXPERT_PATTERNS
from moeweave.formats.hf_checkpoint import Checkpoint

_EXPERT_LIKE = re.compile(r"\.experts\.")


class ExpertCheckpoint(Checkpoint):
    """A checkpoint directory's tensors split into routed experts and dense weights."""

    def __init__(self, directory: str | Path):
        super().__init__(directory)
        self.expert_names: dict[tuple[int, int], dict[str, str]] = {}  # (L, E) -> projection -> name
        self.fused_names: dict[int, dict[str, str]] = {}  # L -> kind -> name (GPT-OSS)
        self._fused_experts: set[tuple[int, int]] = set()
        self.dense_names: list[str] = []
        for name in self.names():
            self._classify(name)
        for layer, kinds in self.fused_names.items():
            missing = {"gate_up_proj", "down_proj"} - set(kinds)
            if missing:
                raise ValueError(
                    f"{self.directory}: layer {layer} lacks fused expert tensors {sorted(missing)}"
                )
            self._fused_experts.update((layer, e) for e in range(self.shape(kinds["gate_up_proj"])[0]))
        for (layer, e), names in self.expert_names.items():
            if set(names) != {"gate", "up", "down"}:
                raise ValueError(
                    f"{self.directory}: layer {layer} expert {e} has only {sorted(names)} of gate, up, down"
                )

    def _classify(self, name: str) -> None:
        for pattern, projections in PER_EXPERT_PATTERNS:
            match = pattern.match(name)
            if match:
                key = (int(match.group(1)), int(match.group(2)))
                self.expert_names.setdefault(key, {})[projections[match.group(3)]] = name
                return
        match = FUSED_PATTERN.match(name)
        if match and self.architecture in FUSED_ARCHITECTURES:
            self.fused_names.setdefault(int(match.group(1)), {})[match.group(2)] = name
            return
        if _EXPERT_LIKE.search(name) and not re.search(r"\.shared_experts?\.", name):
            raise ValueError(
                f"{self.file_of(name)}: tensor {name!r} looks like an expert weight of a layout the store does "
                f"not know (model_type {self.architecture!r}); save the model with transformers' "
                "save_pretrained (which writes per-expert tensors), and dequantise FP8/MXFP4 checkpoints "
                "to bf16/fp32 first"
            )
        self.dense_names.append(name)

    def experts(self) -> list[tuple[int, int]]:
        """Every (layer, expert), sorted."""
        return sorted(set(self.expert_names) | self._fused_experts)

    def expert(self, layer: int, e: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """({gate [I, H], up [I, H], down [H, I]}, biases {gate [I], up [I], down [H]} or {})."""
        fused = self.fused_names.get(layer)
        if fused is None:
            names = self.expert_names[(layer, e)]
            return {p: self.tensor(names[p]) for p in ("gate", "up", "down")}, {}
        gate_up = self.tensor_slice(fused["gate_up_proj"], e)  # [H, 2I], gate/up interleaved
        weights = {
            "gate": gate_up[:, 0::2].t().contiguous(),  # [I, H]
            "up": gate_up[:, 1::2].t().contiguous(),
            "down": self.tensor_slice(fused["down_proj"], e).t().contiguous(),  # [I, H] -> [H, I]
        }
        biases = {}
        if "gate_up_proj_bias" in fused:
            gate_up_bias = self.tensor_slice(fused["gate_up_proj_bias"], e)  # [2I]
            biases["gate"], biases["up"] = gate_up_bias[0::2].contiguous(), gate_up_bias[1::2].contiguous()
        if "down_proj_bias" in fused:
            biases["down"] = self.tensor_slice(fused["down_proj_bias"], e).contiguous()  # [H]
        return weights, biases

    def dense(self) -> dict[str, torch.Tensor]:
        """Every non-expert tensor, by name (shared experts included)."""
        return {name: self.tensor(name) for name in sorted(self.dense_names)}
