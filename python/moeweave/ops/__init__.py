"""moeweave's torch ops (``torch.ops.moeweave.*``), each with a native CPU kernel, a fake
implementation for torch.compile, a vmap rule, and a plain-torch twin in
``moeweave.ops.reference``. silu_mul, reroute and the quantised ops also have CUDA kernels; the
decode-step ops attention, rms_norm and rope run their twin on CUDA tensors. Every floating
input is differentiable except the quantised weights and expert tables (frozen).

Dimension legend used across ops: T tokens, K experts per token, E routed experts of a layer,
A adapters loaded, H hidden size, I expert intermediate size.
"""

from moeweave.ops.attention import attention
from moeweave.ops.moe_experts import moe_experts
from moeweave.ops.quant_matmul import bf16_matmul, quant_matmul
from moeweave.ops.reroute import reroute
from moeweave.ops.rms_norm import rms_norm
from moeweave.ops.rope import rope
from moeweave.ops.silu_mul import silu_mul

__all__ = [
    "attention",
    "bf16_matmul",
    "moe_experts",
    "quant_matmul",
    "reroute",
    "rms_norm",
    "rope",
    "silu_mul",
]
