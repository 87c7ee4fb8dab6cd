"""``moeweave::quant_matmul``: y = x W^T computed on the packed weight (moeweave.quant.format).

Shapes: x [M, K] fp32 or bf16 -> y [M, N] in x's dtype. The CPU kernels quantise x to int8 per
32 columns and use integer dot products (VNNI where available); the relative error this adds is
about 0.5 % of |y| (Frobenius) for Gaussian-like activations, on top of the weight's own
quantisation error. The CUDA kernel dequantises in registers and keeps x in fp32.
"""

import torch

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules, cuda_stream
from moeweave.quant.format import QuantizedWeight


def quant_matmul(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [M, K] @ dequantize(qw)^T -> [M, N], without ever dequantising the weight."""
    args = (x, qw.packed, qw.scales, qw.zeros, qw.n, qw.k, qw.bits, qw.group_size)
    if can_skip_dispatcher(x):
        return _quant_matmul(*args)
    return _quant_matmul_op(*args)


def bf16_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ w^T for a plain bf16 weight w [N, K] -> [M, N] in x's dtype: the same native
    path, streaming bf16 rows with fp32 accumulation."""
    if w.dtype != torch.bfloat16 or w.dim() != 2:
        raise ValueError(f"bf16_matmul: 'w' must be a 2-D bfloat16 tensor, got {w.dtype} {list(w.shape)}")
    args = (x, w.contiguous(), None, None, w.shape[0], w.shape[1], 16, 0)
    if can_skip_dispatcher(x, w):
        return _quant_matmul(*args)
    return _quant_matmul_op(*args)


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
    y = torch.empty(x.shape[0], n, dtype=torch.float32, device=x.device)  # [M, N]
    if y.numel():
        tensors = (
            capsules(packed),
            (None if scales is None else capsules(scales)[0]),
            (None if zeros is None else capsules(zeros)[0]),
        )
        args = (*tensors[0], tensors[1], tensors[2], n, k, bits, group_size, *capsules(x, y))
        if x.is_cuda:
            with torch.cuda.device(x.device):
                native.quant_matmul(*args, cuda_stream(x))
        else:
            native.quant_matmul(*args)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


_quant_matmul_op = torch.library.custom_op("moeweave::quant_matmul", _quant_matmul, mutates_args=())


@_quant_matmul_op.register_fake
def _(x, packed, scales, zeros, n, k, bits, group_size):
    _check(x, packed, k)
    return x.new_empty(x.shape[0], n)
