"""``moeweave::quant_matmul``: y = x W^T computed on the packed weight (moeweave.quant.format).

Shapes: x [M, K] fp32 or bf16 -> y [M, N] in x's dtype. The CPU kernels quantise x to int8 per
32 columns and use integer dot products (VNNI where available); the relative error this adds is
about 0.5 % of |y| (Frobenius) for Gaussian-like activations, on top of the weight's own
quantisation error. The CUDA kernel dequantises in registers and keeps x in fp32. Wide products
go to a bf16 GEMM instead (moeweave.ops.prefill_gemm): on CUDA from 4-8 rows (cuBLAS),
on CPUs whose torch has AMX bf16 GEMMs from GEMM_ROWS.

Differentiable with respect to x (the weight is frozen): dx = dy W through
``moeweave::quant_matmul_t``, a transposed product on the packed format in exact fp32 (CPU: one
column panel at a time; CUDA: dequantised in registers).
"""

import contextlib

import torch

from moeweave import _native
from moeweave.ops import prefill_gemm, reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules, cuda_stream
from moeweave.ops._vmap import register_rows_vmap
from moeweave.quant.format import QuantizedWeight


def _weight_args(w: QuantizedWeight | torch.Tensor) -> tuple:
    """The op's weight arguments (packed, scales, zeros, n, k, bits, group_size) of a packed weight,
    or of a plain bf16 w [N, K] (bits 16)."""
    if isinstance(w, QuantizedWeight):
        return (w.packed, w.scales, w.zeros, w.n, w.k, w.bits, w.group_size)
    return (w.contiguous(), None, None, w.shape[0], w.shape[1], 16, 0)


def quant_matmul(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [M, K] @ dequantize(qw)^T -> [M, N], without ever dequantising the weight."""
    args = (x, *_weight_args(qw))
    if can_skip_dispatcher(x):
        return _quant_matmul(*args)
    return _quant_matmul_op(*args)


def bf16_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ w^T for a plain bf16 weight w [N, K] -> [M, N] in x's dtype: the same native
    path, streaming bf16 rows with fp32 accumulation."""
    if w.dtype != torch.bfloat16 or w.dim() != 2:
        raise ValueError(f"bf16_matmul: 'w' must be a 2-D bfloat16 tensor, got {w.dtype} {list(w.shape)}")
    args = (x, *_weight_args(w))
    if can_skip_dispatcher(x, w):
        return _quant_matmul(*args)
    return _quant_matmul_op(*args)


def _weight_capsules(packed: torch.Tensor, scales: torch.Tensor | None, zeros: torch.Tensor | None) -> list:
    return [None if t is None else capsules(t)[0] for t in (packed, scales, zeros)]


def _check(x: torch.Tensor, packed: torch.Tensor, k: int) -> None:
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"quant_matmul: 'x' must be float32 or bfloat16, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"quant_matmul: 'x' must be [M, {k}], got {list(x.shape)}")
    if x.device != packed.device:
        raise ValueError(f"quant_matmul: 'x' is on {x.device} but the weight is on {packed.device}")


def _quant_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor | None,
    zeros: torch.Tensor | None,
    n: int,
    k: int,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    _check(x, packed, k)
    native = _native.module_for(x.device.type)
    if native is None:
        if bits == 16:
            return (x.float() @ packed.float().t()).to(x.dtype)
        return reference.quant_matmul(x, QuantizedWeight(packed, scales, zeros, n, k, bits, group_size))
    x = x.contiguous()
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if bits != 16 and prefill_gemm.wants_gemm(x, n, k, bits):
            return prefill_gemm.dequantized_gemm(
                native, x, QuantizedWeight(packed, scales, zeros, n, k, bits, group_size)
            )
        y = torch.empty(x.shape[0], n, dtype=torch.float32, device=x.device)  # [M, N]
        if y.numel():
            args = (*_weight_capsules(packed, scales, zeros), n, k, bits, group_size, *capsules(x, y))
            if x.is_cuda:
                native.quant_matmul(*args, cuda_stream(x))
            else:
                native.quant_matmul(*args)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


_quant_matmul_op = torch.library.custom_op("moeweave::quant_matmul", _quant_matmul, mutates_args=())


@_quant_matmul_op.register_fake
def _(x, packed, scales, zeros, n, k, bits, group_size):
    _check(x, packed, k)
    return x.new_empty(x.shape[0], n)


def _quant_matmul_t(
    dy: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor | None,
    zeros: torch.Tensor | None,
    n: int,
    k: int,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """dy [M, N] fp32 -> dx [M, K] fp32 = dy W."""
    native = _native.module_for(dy.device.type)
    if native is None:
        if bits == 16:
            return dy @ packed.float()
        return reference.quant_matmul_t(dy, QuantizedWeight(packed, scales, zeros, n, k, bits, group_size))
    dy = dy.contiguous()
    dx = dy.new_empty(dy.shape[0], k)  # [M, K]
    if dx.numel():
        args = (*_weight_capsules(packed, scales, zeros), n, k, bits, group_size, *capsules(dy, dx))
        if dy.is_cuda:
            with torch.cuda.device(dy.device):
                native.quant_matmul_t(*args, cuda_stream(dy))
        else:
            native.quant_matmul_t(*args)
    return dx


_quant_matmul_t_op = torch.library.custom_op("moeweave::quant_matmul_t", _quant_matmul_t, mutates_args=())


@_quant_matmul_t_op.register_fake
def _(dy, packed, scales, zeros, n, k, bits, group_size):
    return dy.new_empty(dy.shape[0], k)


def _setup_context(ctx, inputs, output) -> None:
    x, packed, scales, zeros, *fields = inputs
    ctx.save_for_backward(packed, scales, zeros)
    ctx.fields, ctx.x_dtype = fields, x.dtype


def _backward(ctx, grad: torch.Tensor):
    packed, scales, zeros = ctx.saved_tensors
    dx = (
        _quant_matmul_t_op(grad.float(), packed, scales, zeros, *ctx.fields)
        if ctx.needs_input_grad[0]
        else None
    )
    return (None if dx is None else dx.to(ctx.x_dtype)), None, None, None, None, None, None, None


_quant_matmul_op.register_autograd(_backward, setup_context=_setup_context)
register_rows_vmap(_quant_matmul_op, row_args=(0,))


def project(x: torch.Tensor, w) -> torch.Tensor:
    """x [M, K] fp32 @ w^T -> [M, N] fp32 for a projection of an expert table (packed or bf16),
    on the op implementations (no autograd)."""
    return _quant_matmul(x, *_weight_args(w))


def project_t(dy: torch.Tensor, w) -> torch.Tensor:
    """dy [M, N] fp32 @ w -> [M, K] fp32, the transposed product of `project`."""
    return _quant_matmul_t(dy, *_weight_args(w))
