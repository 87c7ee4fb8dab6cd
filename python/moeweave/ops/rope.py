"""``moeweave::rope``: rotary position embedding in the half-split layout, with transformers'
roundings.

Shapes: x [B, S, H, D] (the projection output before heads are transposed), cos and sin [S, D]
of x's dtype -> [B, S, H, D]. out = dtype(x * cos) + dtype(rotate_half(x) * sin), rounded once
more, with rotate_half(x) = [-x[..., D/2:], x[..., :D/2]]. One native call instead of the six
torch ops of the plain formula. CUDA tensors go to the plain-torch twin.
Differentiable with respect to every tensor input, with the backward formulas of
``reference.rope_backward`` (plain torch, fp32).
"""

import torch

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules
from moeweave.ops._vmap import register_rows_vmap

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, H, D] by the angles of cos, sin [S, D]."""
    if can_skip_dispatcher(x, cos, sin):
        return _rope(x, cos, sin)
    return _rope_op(x, cos, sin)


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"rope: 'x' must be float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"rope: 'x' must be [B, S, H, D] with an even D, got {list(x.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype != x.dtype or t.shape != (x.shape[1], x.shape[3]) or t.device != x.device:
            raise ValueError(
                f"rope: '{name}' must be {x.dtype} [{x.shape[1]}, {x.shape[3]}] on {x.device}, "
                f"got {t.dtype} {list(t.shape)} on {t.device}"
            )


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    _check(x, cos, sin)
    native = _native.module_for("cpu") if x.is_cpu else None
    if native is None:
        return reference.rope(x, cos, sin)
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    out = torch.empty_like(x)
    if out.numel():
        native.rope(*capsules(x, cos, sin, out))
    return out


_rope_op = torch.library.custom_op("moeweave::rope", _rope, mutates_args=())


@_rope_op.register_fake
def _(x, cos, sin):
    _check(x, cos, sin)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: torch.Tensor):
    return reference.rope_backward(grad, *ctx.saved_tensors)


_rope_op.register_autograd(_backward, setup_context=_setup_context)
register_rows_vmap(_rope_op, row_args=(0,))
