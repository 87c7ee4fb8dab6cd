"""Weight-only quantisation of expert matrices: packed INT2/3/4/8 formats, quantisers, and
matmuls that compute on the packed format (``quant_matmul``, ``moe_experts``).
"""

from moeweave.quant.experts import ExpertTable
from moeweave.quant.format import QuantizedWeight
from moeweave.quant.quantize import dequantize, quantize, relative_error

__all__ = [
    "ExpertTable",
    "QuantizedWeight",
    "dequantize",
    "moe_experts",
    "quant_matmul",
    "quantize",
    "relative_error",
]


def __getattr__(name: str):
    # The ops live in moeweave.ops and import this package's format; resolving them on first
    # use keeps either import order free of cycles.
    if name == "quant_matmul":
        from moeweave.ops.quant_matmul import quant_matmul

        return quant_matmul
    if name == "moe_experts":
        from moeweave.ops.moe_experts import moe_experts

        return moe_experts
    raise AttributeError(f"module 'moeweave.quant' has no attribute '{name}'")
