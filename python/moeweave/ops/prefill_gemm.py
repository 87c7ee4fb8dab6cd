"""Wide products of a packed weight on torch's bf16 GEMM. Where torch runs bf16 GEMMs on AMX tiles
(oneDNN, on CPUs with AMX-BF16), a prompt's worth of rows multiplies faster there than on
moeweave's integer kernels, which are bound by their dot products from ~32 rows on
(docs/benchmarks.md, "Packed products against the compute limit"). The weight is dequantised to
bf16 natively, one panel of PANEL_BYTES at a time (still in cache when the GEMM reads it; the
whole bf16 weight is never held), and each panel is multiplied by torch.

On a GPU the CUDA kernel runs its row FMAs on the CUDA cores, so from cuda_gemm_rows(bits) rows the
weight is dequantised in panels of up to CUDA_PANEL_BYTES (most weights: one) and multiplied by
cuBLAS on the tensor cores.

Numerics: x and the weight's values scale * (q - zero) are rounded to bf16, oneDNN accumulates
in fp32 and rounds y to bf16: the error of a bf16 model, against the integer kernels' int8
activations (~0.5 % of |y|). Which path a product takes depends on its row count, so unlike the
integer kernels' rows, these depend on the batch they came in.

Dimension legend: M rows (tokens), K input features, N output features.
"""

import torch

from moeweave import cpu
from moeweave.ops._launch import capsules, cuda_stream
from moeweave.quant.format import QuantizedWeight

# From this many rows, and for weights of at least GEMM_MIN_VALUES values, the GEMM path wins on
# the AMX machine it was measured on (bench/prefill_gemm.py; docs/benchmarks.md): per product
# 1.07-1.82x the integer kernels at 1024 rows and 1.57-1.89x at 2048, but 0.75-1.26x at 256 and
# 1.00-1.50x at 512, where a whole Qwen3-shaped prefill did not gain (0.80-0.99x at 512 tokens;
# 1.04-1.14x at 2048). Smaller weights were not measured. Without AMX (Zen 5, oneDNN on
# AVX512-BF16) the path lost up to 1024 rows (median 0.54-0.80x) and tied at 2048 (0.91x).
GEMM_ROWS = 1024
GEMM_MIN_VALUES = 1 << 20
PANEL_BYTES = 8 << 20
# From this many rows the CUDA path dequantises and calls cuBLAS, 8-bit weights from fewer
# (bench/cuda_kernels.py on an H200, docs/benchmarks.md: at 4 rows cuBLAS won 1.13-1.41x for
# INT8 and lost 0.72-0.96x for INT4; at 8 rows it won or tied for both).
CUDA_GEMM_ROWS = 8
CUDA_GEMM_ROWS_INT8 = 4
# On a GPU the panels are large, for cuBLAS's sake, but bounded: a 152k-token LM head of 4096
# columns would otherwise take a 1.2 GB bf16 copy per call.
CUDA_PANEL_BYTES = 256 << 20


def cuda_gemm_rows(bits: int) -> int:
    return CUDA_GEMM_ROWS_INT8 if bits == 8 else CUDA_GEMM_ROWS


def wants_gemm(x: torch.Tensor, n: int, k: int, bits: int) -> bool:
    """Whether x [M, K] @ W^T for a packed W [n, k] of `bits` bits should run on a bf16 GEMM."""
    m = x.shape[0]
    if x.is_cuda:
        return m >= cuda_gemm_rows(bits)
    return m >= GEMM_ROWS and n * k >= GEMM_MIN_VALUES and cpu.has_amx_bf16()


def dequantized_gemm(native, x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in x's dtype, for a packed W (bits 2/3/4/8) on x's device."""
    xb = x.to(torch.bfloat16)
    panel_bytes = CUDA_PANEL_BYTES if x.is_cuda else PANEL_BYTES
    rows = max(16, panel_bytes // (2 * qw.k) // 16 * 16)  # a multiple of 16: panels start on tiles
    panel = torch.empty(min(rows, qw.n), qw.k, dtype=torch.bfloat16, device=x.device)  # [rows, K]
    if rows >= qw.n:
        dequantize_rows(native, qw, 0, panel)
        return (xb @ panel.t()).to(x.dtype)
    y = torch.empty(x.shape[0], qw.n, dtype=torch.bfloat16, device=x.device)  # [M, N]
    for begin in range(0, qw.n, rows):
        part = panel[: min(rows, qw.n - begin)]
        dequantize_rows(native, qw, begin, part)
        y[:, begin : begin + part.shape[0]] = xb @ part.t()
    return y.to(x.dtype)


def dequantize_rows(native, qw: QuantizedWeight, begin: int, out: torch.Tensor) -> None:
    """out [R, K] bf16 = rows [begin, begin + R) of the packed W, dequantised natively; begin is a
    multiple of 16. On CUDA the kernel is enqueued on out's current stream."""
    weight = [None if t is None else capsules(t)[0] for t in (qw.packed, qw.scales, qw.zeros)]
    args = (*weight, qw.n, qw.k, qw.bits, qw.group_size, begin, *capsules(out))
    if out.is_cuda:
        native.quant_dequantize_bf16(*args, cuda_stream(out))
    else:
        native.quant_dequantize_bf16(*args)
