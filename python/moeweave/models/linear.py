"""Dense projections of the model. A decode step multiplies a handful of rows by each weight,
which is a pure weight stream; few-row bf16 products go to moeweave's bf16 kernel and the rest
to torch. For one row of a [32000, 2048] bf16 weight read from DRAM, ours streams ~47 GB/s and
torch's F.linear ~30 GB/s on this machine (idle); with other work on the cores torch's OpenMP
regions stall further (11 GB/s, measured while a training job ran).

Dimension legend: M rows (tokens), K input features, N output features.
"""

import torch
import torch.nn.functional as F

from moeweave.ops.quant_matmul import bf16_matmul, quant_matmul
from moeweave.quant.format import QuantizedWeight

# Up to this many rows the product is bound by reading the weight; beyond it torch's blocked
# GEMM, which reuses each weight across rows, is the faster one. On a Zen 5 core pair, for a
# [10944, 2048] bf16 weight: 2.3 against 3.0 ms at one row, 3.5 against 2.8 at four, 7.7
# against 2.5 at eight (a server's decode batch).
STREAMING_ROWS = 2


def linear(
    x: torch.Tensor, w: torch.Tensor | QuantizedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., K] @ w^T (+ bias) -> [..., N] in x's dtype; w [N, K], a tensor or packed
    (projections="int8"). An fp32 x with a bf16 w gives the fp32 product (the model's logits)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if isinstance(w, QuantizedWeight):
        y = quant_matmul(x.reshape(rows, x.shape[-1]), w).view(*x.shape[:-1], w.n)
        return y if bias is None else y + bias
    streaming = 0 < rows <= STREAMING_ROWS and w.dtype == torch.bfloat16 and x.is_cpu
    if streaming and x.dtype in (torch.bfloat16, torch.float32):
        y = bf16_matmul(x.reshape(rows, x.shape[-1]), w).view(*x.shape[:-1], w.shape[0])
        return y if bias is None else y + bias
    return F.linear(x.to(w.dtype), w, bias).to(x.dtype)
