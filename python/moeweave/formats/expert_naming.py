"""How each architecture names its routed experts' tensors on disk and their sizes in
config.json: the one place that knows, read by the expert store (which splits a checkpoint into
experts and dense weights) and by model loading (which asks for each expert by name).

Per-expert layouts (transformers 5 fuses experts in memory but writes these):
  Mixtral             model.layers.L.block_sparse_moe.experts.E.{w1,w3,w2}.weight  (gate, up, down)
  Qwen2/3-MoE, OLMoE, model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight
  DeepSeek-V2/V3
Fused layout (GPT-OSS): model.layers.L.mlp.experts.{gate_up_proj, gate_up_proj_bias, down_proj,
down_proj_bias}, one tensor holding every expert of the layer.
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ExpertNaming:
    moe_module: str  # the layer's MoE block: model.layers.L.<moe_module>
    projections: tuple[str, str, str] | None  # file names of gate, up, down; None for fused tensors
    intermediate_key: str  # config.json field of the expert intermediate size

    def tensor(self, layer: int, expert: int, projection: int) -> str:
        """The name of projection 0 (gate), 1 (up) or 2 (down) of one per-expert layout expert."""
        return (
            f"model.layers.{layer}.{self.moe_module}.experts.{expert}.{self.projections[projection]}.weight"
        )


_GATE_UP_DOWN = ("gate_proj", "up_proj", "down_proj")
ARCHITECTURES = {
    "mixtral": ExpertNaming("block_sparse_moe", ("w1", "w3", "w2"), "intermediate_size"),
    "qwen2_moe": ExpertNaming("mlp", _GATE_UP_DOWN, "moe_intermediate_size"),
    "qwen3_moe": ExpertNaming("mlp", _GATE_UP_DOWN, "moe_intermediate_size"),
    "olmoe": ExpertNaming("mlp", _GATE_UP_DOWN, "intermediate_size"),
    "deepseek_v2": ExpertNaming("mlp", _GATE_UP_DOWN, "moe_intermediate_size"),
    "deepseek_v3": ExpertNaming("mlp", _GATE_UP_DOWN, "moe_intermediate_size"),
    "gpt_oss": ExpertNaming("mlp", None, "intermediate_size"),
}
PROJECTIONS = ("gate", "up", "down")

# (pattern with groups layer, expert, file name; file name -> projection) of every per-expert
# layout, matched whatever the architecture claims (a tensor in one of them is an expert).
PER_EXPERT_PATTERNS = [
    (
        re.compile(
            rf"^(?:.*\.)?layers\.(\d+)\.{re.escape(module)}\.experts\.(\d+)\.({'|'.join(names)})\.weight$"
        ),
        dict(zip(names, PROJECTIONS, strict=True)),
    )
    for module, names in sorted(
        {(n.moe_module, n.projections) for n in ARCHITECTURES.values() if n.projections}
    )
]
FUSED_PATTERN = re.compile(
    r"^(?:.*\.)?layers\.(\d+)\.mlp\.experts\.(gate_up_proj|gate_up_proj_bias|down_proj|down_proj_bias)$"
)
FUSED_ARCHITECTURES = tuple(name for name, naming in ARCHITECTURES.items() if naming.projections is None)
