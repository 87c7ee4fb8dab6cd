"""``moeweave::attention``: grouped-query attention of a few new queries over a KV cache.

Shapes: q [B, nH, S, Dk]; k [B, nKV, T, Dk] and v [B, nKV, T, Dv], which may be views into
larger cache buffers (only the last dim must be contiguous); mask [B, 1, S, T] or [B, S, T]
bool (True = may attend) -> [B, nH, S, Dv] in q's dtype. nKV must divide nH; query head h reads
key/value head h // (nH / nKV). Scores, softmax and the weighted sum are fp32; a query that may
attend to no key gets zeros.

This is the decode-step attention of moeweave's models: one native call per layer on moeweave's
thread pool, instead of torch's batched matmuls, whose OpenMP threads then compete with the
pool's for the same cores. CUDA tensors go to the plain-torch twin.
Differentiable with respect to every tensor input, with the backward formulas of
``reference.attention_backward`` (plain torch, fp32).
"""

import torch

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules
from moeweave.ops._vmap import register_rows_vmap

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v with grouped heads; scale defaults to Dk ** -0.5."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    mask = mask.squeeze(1) if mask.dim() == 4 else mask
    if can_skip_dispatcher(q, k, v):
        return _attention(q, k, v, mask, scale)
    return _attention_op(q, k, v, mask, scale)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> None:
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"attention: 'q' must be float32, float16 or bfloat16, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"attention: '{name}' must have the dtype of 'q' ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"attention: '{name}' is on {t.device} but 'q' is on {q.device}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention: q, k, v must be 4-D, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
        )
    batch, heads, queries, dk = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    if k.shape != (batch, kv_heads, keys, dk) or v.shape[:3] != (batch, kv_heads, keys):
        raise ValueError(
            f"attention: k must be [{batch}, nKV, T, {dk}] and v [{batch}, nKV, T, Dv], "
            f"got {list(k.shape)} and {list(v.shape)}"
        )
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"attention: {kv_heads} key/value heads do not divide {heads} query heads")
    if mask.dtype != torch.bool or mask.shape != (batch, queries, keys):
        raise ValueError(
            f"attention: 'mask' must be bool [{batch}, 1, {queries}, {keys}], got {mask.dtype} {list(mask.shape)}"
        )


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    _check(q, k, v, mask)
    native = _native.module_for("cpu") if q.is_cpu else None
    if native is None:
        return reference.attention(q, k, v, mask, scale)
    out, arguments = _native_arguments(q, k, v, mask)
    if out.numel():
        native.attention(*arguments, scale)
    return out


def _native_arguments(q, k, v, mask) -> tuple[torch.Tensor, list]:
    """The output [B, nH, S, Dv] and the capsules of (q, k, v, mask, out) as the kernel reads
    them: q and mask contiguous, k and v with a contiguous last dim (mask [B, S, T], checked)."""
    q, mask = q.contiguous(), mask.contiguous()
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    return out, capsules(q, k, v, mask.view(torch.uint8), out)


_attention_op = torch.library.custom_op("moeweave::attention", _attention, mutates_args=())


def attention_batch(
    problems: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]], scale: float
) -> list[torch.Tensor]:
    """`attention` of many independent (q, k, v, mask) problems, each of its own shapes (as
    `attention` takes them), in one native call: the decoding sequences of a ragged batch, each
    over its own cache, without a call and a parallel region per sequence. Other devices, inputs
    that need a gradient, or no native module: `attention` per problem."""
    native = _native.module_for("cpu")
    if native is None or not all(can_skip_dispatcher(q, k, v) and q.is_cpu for q, k, v, _ in problems):
        return [attention(q, k, v, mask, scale) for q, k, v, mask in problems]
    outputs, arguments = [], []
    for q, k, v, mask in problems:
        mask = mask.squeeze(1) if mask.dim() == 4 else mask
        _check(q, k, v, mask)
        out, capsules_of_problem = _native_arguments(q, k, v, mask)
        outputs.append(out)
        if out.numel():
            arguments.append(tuple(capsules_of_problem))
    native.attention_batch(arguments, float(scale))
    return outputs


@_attention_op.register_fake
def _(q, k, v, mask, scale):
    _check(q, k, v, mask)
    return q.new_empty(*q.shape[:3], v.shape[-1])


def _setup_context(ctx, inputs, output) -> None:
    *tensors, ctx.scale = inputs
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad: torch.Tensor):
    q, k, v, mask = ctx.saved_tensors
    return (*reference.attention_backward(grad, q, k, v, mask, ctx.scale), None, None)


_attention_op.register_autograd(_backward, setup_context=_setup_context)
register_rows_vmap(_attention_op, row_args=(0, 1, 2, 3))
