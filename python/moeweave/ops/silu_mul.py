"""``moeweave::silu_mul``: the fused activation of every gated expert FFN, silu(gate) * up.

Shapes: gate, up [..., I] of one float dtype (fp32, fp16, bf16) -> out [..., I], same dtype.
Computed in fp32 with one rounding to the output dtype. Differentiable; the backward is
elementwise plain torch (memory-bound, and torch already fuses it under compile).
"""

import torch

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules, cuda_stream
from moeweave.ops._vmap import register_rows_vmap

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up; gate, up [..., I] -> [..., I]."""
    if can_skip_dispatcher(gate, up):
        return _silu_mul(gate, up)
    return _silu_mul_op(gate, up)


def _check(gate: torch.Tensor, up: torch.Tensor) -> None:
    if gate.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"silu_mul: 'gate' must be float32, float16 or bfloat16, got {gate.dtype}")
    if up.dtype != gate.dtype:
        raise ValueError(f"silu_mul: 'up' must have the dtype of 'gate' ({gate.dtype}), got {up.dtype}")
    if up.shape != gate.shape:
        raise ValueError(
            f"silu_mul: 'up' must have the shape of 'gate' {list(gate.shape)}, got {list(up.shape)}"
        )
    if up.device != gate.device:
        raise ValueError(f"silu_mul: 'up' is on {up.device} but 'gate' is on {gate.device}")


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    _check(gate, up)
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)  # [..., I]
    if out.numel() == 0:
        return out
    native = _native.module_for(gate.device.type)
    if native is None:
        return reference.silu_mul(gate, up)
    if gate.is_cuda:
        with torch.cuda.device(gate.device):
            native.silu_mul(*capsules(gate, up, out), cuda_stream(gate))
    else:
        native.silu_mul(*capsules(gate, up, out))
    return out


_silu_mul_op = torch.library.custom_op("moeweave::silu_mul", _silu_mul, mutates_args=())


@_silu_mul_op.register_fake
def _(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    _check(gate, up)
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: torch.Tensor):
    gate, up = ctx.saved_tensors
    g = gate.float()
    sig = torch.sigmoid(g)
    grad_f = grad.float()
    grad_up = grad_f * g * sig  # d/d up = silu(gate)
    grad_gate = grad_f * up.float() * sig * (1 + g * (1 - sig))  # silu'(g) = s (1 + g (1 - s))
    return grad_gate.to(gate.dtype), grad_up.to(up.dtype)


_silu_mul_op.register_autograd(_backward, setup_context=_setup_context)
register_rows_vmap(_silu_mul_op, row_args=(0, 1), leading_dims_free=True)
