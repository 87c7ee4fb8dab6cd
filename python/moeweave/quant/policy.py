"""The named weight formats of the model-facing APIs ("bf16", "int8", "int4", "int3", "int2"):
the one place that says what each name means. Quantised formats use groups of 64 columns;
8 and 4 bits are symmetric, 3 and 2 bits asymmetric (a zero per group pays off at low bits).
"""

import torch

from moeweave.quant.experts import Projection
from moeweave.quant.format import QuantizedWeight
from moeweave.quant.quantize import quantize

GROUP_SIZE = 64
SYMMETRIC_FROM = 4  # bits at and above which the named formats are symmetric
FUSED_FORMATS = ("bf16", "int8", "int4", "int3", "int2")  # what the fused MoE op computes with
QUANTISED_BITS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}


def quantize_as(w: torch.Tensor, name: str) -> QuantizedWeight:
    """w [N, K] packed in the named quantised format ("int8", "int4", "int3" or "int2")."""
    if name not in QUANTISED_BITS:
        raise ValueError(f"quantize_as: format must be one of {tuple(QUANTISED_BITS)}, got {name!r}")
    bits = QUANTISED_BITS[name]
    # quantize converts a row chunk at a time to fp32: no whole fp32 copy of a large weight.
    return quantize(w.detach(), bits=bits, group_size=GROUP_SIZE, sym=bits >= SYMMETRIC_FROM)


def fused_projection(w: torch.Tensor, name: str) -> Projection:
    """w [N, K] as the fused MoE op takes it in the named format: contiguous bf16, or packed."""
    if name == "bf16":
        return w.detach().to(torch.bfloat16).contiguous()
    return quantize_as(w, name)
