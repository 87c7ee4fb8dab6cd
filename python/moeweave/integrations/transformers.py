"""moeweave's fused expert kernel as an experts implementation of transformers.

transformers 5 lets a model pick how its MoE experts run (``ExpertsInterface``). After
``register()``, ``model.set_experts_implementation("moeweave")`` routes every experts module
through moeweave's fused MoE op; ``use_moeweave_experts(model, experts="int4")`` does both and
chooses the expert format (bf16, or int8/int4/int3/int2 packed: moeweave.quant.policy).

The experts become a frozen base: the op differentiates the hidden states and the routing
weights (so everything around the experts trains, router included), not the expert weights,
whose parameters are set to requires_grad=False. The packed tables are built when the model is
switched, and rebuilt in eager mode when an expert weight changes; under torch.compile the
tables of the last eager build are used (checking the weights would break the graph).

Supported expert layouts: concatenated gate/up (``gate_up_proj [E, 2I, H]``, ``down_proj
[E, H, I]``) without biases — Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3. Others (GPT-OSS's
interleaved, biased experts) are refused with an explanation.

Dimension legend: S token-expert rows, E experts, H hidden, I intermediate, K experts per token.
"""

import torch

from moeweave.ops import moe_experts
from moeweave.quant import ExpertTable
from moeweave.quant.finite import require_finite
from moeweave.quant.policy import FUSED_FORMATS, fused_projection

NAME = "moeweave"
# 5.0-5.6 reject any experts implementation outside their built-in list.
MIN_TRANSFORMERS = "5.7"


def _projection(w: torch.Tensor, experts: str, where: str):
    """w [N, K] (one expert's projection, named `where` in errors) -> what the fused op computes with."""
    require_finite(w.detach(), where)
    return fused_projection(w, experts)


def _table(module: torch.nn.Module) -> ExpertTable:
    """The module's experts as an ExpertTable, cached until a weight is modified in place or replaced."""
    if torch.compiler.is_compiling():
        return module._moeweave_table[1]
    if (
        getattr(module, "has_bias", False)
        or getattr(module, "is_transposed", False)
        or not getattr(module, "is_concatenated", True)
    ):
        raise NotImplementedError(
            f"moeweave experts: {type(module).__name__} stores biased, transposed or interleaved experts, "
            "which moeweave's fused op does not take; use another experts implementation for this model"
        )
    gate_up, down = module.gate_up_proj, module.down_proj  # [E, 2I, H], [E, H, I]
    experts = getattr(module, "moeweave_experts", "bf16")
    key = (gate_up.data_ptr(), gate_up._version, down.data_ptr(), down._version, experts)
    cached = getattr(module, "_moeweave_table", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    inter = down.shape[-1]
    where = f"moeweave experts: {type(module).__name__}"
    table = ExpertTable(
        [
            (
                _projection(
                    gate_up[e, :inter], experts, f"{where} expert {e} gate (gate_up_proj[{e}, :{inter}])"
                ),
                _projection(
                    gate_up[e, inter:], experts, f"{where} expert {e} up (gate_up_proj[{e}, {inter}:])"
                ),
                _projection(down[e], experts, f"{where} expert {e} down (down_proj[{e}])"),
            )
            for e in range(gate_up.shape[0])
        ]
    )
    module._moeweave_table = (key, table)
    return table


def moeweave_experts_forward(
    module: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """The experts forward transformers calls: hidden_states [T, H], top_k_index / top_k_weights
    [T, K] -> [T, H] in hidden_states' dtype."""
    x = hidden_states if hidden_states.dtype in (torch.float32, torch.bfloat16) else hidden_states.float()
    ids, weights = top_k_index.to(torch.int32), top_k_weights.float()
    tuned = getattr(module, "moeweave_tuned", None)  # trainable experts beside the frozen ones (train.esft)
    if tuned is not None:
        y = tuned(x, ids, weights, lambda x, ids, weights: moe_experts(x, ids, weights, _table(module)))
    else:
        y = moe_experts(x, ids, weights, _table(module))
    return y.to(hidden_states.dtype)


def register() -> None:
    """Make "moeweave" a valid experts implementation in transformers (5.7 or newer)."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):
        raise ImportError(
            f"moeweave experts need transformers >= {MIN_TRANSFORMERS}, the first release whose "
            f"set_experts_implementation accepts registered implementations; this is "
            f"{transformers.__version__} (pip install 'moeweave[transformers]')"
        )
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(NAME, moeweave_experts_forward)


def use_moeweave_experts(model, experts: str = "bf16"):
    """Switch a loaded transformers MoE model to moeweave's fused experts in the given format."""
    if experts not in FUSED_FORMATS:
        raise ValueError(f"use_moeweave_experts: experts must be one of {FUSED_FORMATS}, got {experts!r}")
    register()
    for module in model.modules():
        if hasattr(module, "gate_up_proj") and hasattr(module, "down_proj"):
            module.moeweave_experts = experts
            module.gate_up_proj.requires_grad_(False)
            module.down_proj.requires_grad_(False)
            _table(module)
    model.set_experts_implementation(NAME)
    return model
