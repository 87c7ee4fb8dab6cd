"""``moeweave::rms_norm``: RMSNorm over the last dim, with transformers' roundings.

Shapes: x [..., H], weight [H] of the same float dtype -> [..., H]. Computed as
weight * dtype(x * rsqrt(mean(x^2) + eps)) in fp32: normalise, round to the dtype, then scale.
One native call instead of the eight torch ops of the plain formula, which at decode sizes
cost more in dispatch than in arithmetic. CUDA tensors go to the plain-torch twin.
Differentiable with respect to every tensor input, with the backward formulas of
``reference.rms_norm_backward`` (plain torch, fp32).
"""

import torch

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules
from moeweave.ops._vmap import register_rows_vmap

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x [..., H] with weight [H] -> [..., H]."""
    if can_skip_dispatcher(x, weight):
        return _rms_norm(x, weight, float(eps))
    return _rms_norm_op(x, weight, float(eps))


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"rms_norm: 'x' must be float32, float16 or bfloat16, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise ValueError(f"rms_norm: 'weight' must have the dtype of 'x' ({x.dtype}), got {weight.dtype}")
    if weight.dim() != 1 or x.dim() == 0 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rms_norm: 'weight' must be [{x.shape[-1] if x.dim() else '?'}], got {list(weight.shape)}"
        )
    if weight.device != x.device:
        raise ValueError(f"rms_norm: 'weight' is on {weight.device} but 'x' is on {x.device}")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check(x, weight)
    native = _native.module_for("cpu") if x.is_cpu else None
    if native is None:
        return reference.rms_norm(x, weight, eps)
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    if out.numel():
        native.rms_norm(*capsules(x, weight, out), eps)
    return out


_rms_norm_op = torch.library.custom_op("moeweave::rms_norm", _rms_norm, mutates_args=())


@_rms_norm_op.register_fake
def _(x, weight, eps):
    _check(x, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, ctx.eps = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad: torch.Tensor):
    x, weight = ctx.saved_tensors
    return (*reference.rms_norm_backward(grad, x, weight, ctx.eps), None)


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)
register_rows_vmap(_rms_norm_op, row_args=(0,), leading_dims_free=True)
