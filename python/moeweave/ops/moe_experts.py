"""``moeweave::moe_experts``: the routed-expert stage of an MoE layer in one native call.

Shapes: x [T, H] fp32 or bf16; topk_ids [T, K] int32 (slots of the expert table); topk_weights
[T, K] -> y [T, H] in x's dtype, y[t] = sum_k w[t, k] * down_e(silu(gate_e x_t) * up_e x_t).
On CPU, tokens are grouped by expert inside the kernel and each used expert runs once over its
tokens. On CUDA (experts and x on the GPU), three launches compute gate/up, down and the
weighted sum per (token, slot) pair, with no host synchronisation. The table's slot records are
copied to the device once per change of the table (its tensor's version), on the calling
stream, so calls after the first can be captured in a CUDA graph (which reads the copy as last
uploaded: after changing the table, call the op once outside the graph before replaying it).
Like any tensor written on one stream, the copy is ready for other streams once they wait on
that one (``torch.cuda.Stream.wait_stream``).

Differentiable with respect to x and topk_weights (the experts are frozen): on CPU one native
call (``moeweave::moe_experts_backward``) recomputes the stage and runs the chain rule back
through it with transposed products on the packed weights; on CUDA the same chain rule runs
expert by expert on quant_matmul and its transposed product (``backward_by_expert``).
"""

import torch
from torch.utils.weak import WeakIdKeyDictionary

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules, cuda_stream
from moeweave.ops._vmap import register_rows_vmap
from moeweave.ops.quant_matmul import project, project_t
from moeweave.quant.experts import ExpertTable

# table tensor -> {device: (the table's version when its slots were uploaded, the device copy)}
_device_slots: WeakIdKeyDictionary = WeakIdKeyDictionary()


def moe_experts(
    x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: ExpertTable
) -> torch.Tensor:
    """x [T, H], topk_ids [T, K] int32, topk_weights [T, K] -> [T, H] through the experts of the table."""
    if can_skip_dispatcher(x, topk_ids, topk_weights):
        return _moe_experts(x, topk_ids, topk_weights, experts.table)
    return _moe_experts_op(x, topk_ids, topk_weights, experts.table)


def _check(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, table: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.bfloat16) or x.dim() != 2:
        raise ValueError(
            f"moe_experts: 'x' must be a [T, H] float32 or bfloat16 tensor, got {x.dtype} {list(x.shape)}"
        )
    if topk_ids.dtype != torch.int32 or topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(
            f"moe_experts: 'topk_ids' must be int32 [{x.shape[0]}, K], got {topk_ids.dtype} {list(topk_ids.shape)}"
        )
    if topk_weights.shape != topk_ids.shape or not topk_weights.is_floating_point():
        raise ValueError(
            f"moe_experts: 'topk_weights' must be floating [{', '.join(map(str, topk_ids.shape))}], got "
            f"{topk_weights.dtype} {list(topk_weights.shape)}"
        )
    for name, tensor in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if tensor.device != x.device:
            raise ValueError(f"moe_experts: '{name}' is on {tensor.device} but 'x' is on {x.device}")


def _moe_experts(
    x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    _check(x, topk_ids, topk_weights, table)
    native = _native.module_for(x.device.type)
    if native is None:
        return reference.moe_experts(x, topk_ids, topk_weights, ExpertTable.owning(table))
    x, topk_ids = x.contiguous(), topk_ids.contiguous()
    weights = topk_weights.to(torch.float32).contiguous()
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # [T, H]
    if x.is_cuda:
        tokens, top_k = topk_ids.shape
        inter = int(table[0, 0, 3])  # gate's n (table rows: see moeweave.quant.experts.FIELDS)
        uploaded = _device_slots.setdefault(table, {})
        version, slots = uploaded.get(x.device, (None, None))
        if slots is None:
            slots = torch.empty(table.shape[0] * native.expert_slot_bytes, dtype=torch.uint8, device=x.device)
        workspace = torch.empty(tokens * top_k * (inter + x.shape[1]), device=x.device)
        with torch.cuda.device(x.device):
            native.moe_experts(
                *capsules(table, x, topk_ids, weights, y, slots),
                version != table._version,
                *capsules(workspace),
                inter,
                cuda_stream(x),
            )
        uploaded[x.device] = (table._version, slots)
    else:
        native.moe_experts(*capsules(table, x, topk_ids, weights, y))
    return y if x.dtype == torch.float32 else y.to(x.dtype)


_moe_experts_op = torch.library.custom_op("moeweave::moe_experts", _moe_experts, mutates_args=())


@_moe_experts_op.register_fake
def _(x, topk_ids, topk_weights, table):
    _check(x, topk_ids, topk_weights, table)
    return torch.empty_like(x)


def _moe_experts_backward(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    table: torch.Tensor,
    grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad = dL/dy [T, H] fp32 -> (dL/dx [T, H], dL/dtopk_weights [T, K]), both fp32."""
    native = _native.module_for("cpu") if x.is_cpu else None
    if native is None:
        return backward_by_expert(x, topk_ids, topk_weights, ExpertTable.owning(table), grad)
    x, topk_ids, grad = x.contiguous(), topk_ids.contiguous(), grad.contiguous()
    weights = topk_weights.to(torch.float32).contiguous()
    dx, dweights = torch.empty_like(grad), torch.empty_like(weights)
    native.moe_experts_backward(*capsules(table, x, topk_ids, weights, grad, dx, dweights))
    return dx, dweights


def backward_by_expert(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    experts: ExpertTable,
    grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of the CUDA op (and of a missing native module): the same chain rule as the
    native CPU backward, one used expert at a time, on quant_matmul and its transposed product
    (no expert is dequantised as a whole). Shapes as _moe_experts_backward."""
    xf, weights = x.float(), topk_weights.float()
    dx = torch.zeros_like(grad)  # [T, H]
    dweights = torch.zeros_like(weights)  # [T, K]
    for e in topk_ids.unique().tolist():
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        gate, up, down = experts[e]
        xe, dy = xf[token], grad[token]  # [n_e, H]
        g, u = project(xe, gate), project(xe, up)  # [n_e, I]
        sig = torch.sigmoid(g)
        dweights[token, slot] = (dy * project(g * sig * u, down)).sum(-1)
        dh = project_t(dy * weights[token, slot, None], down)  # [n_e, I]
        d_gate = dh * u * sig * (1 + g * (1 - sig))  # silu'(g) = s (1 + g (1 - s))
        dx.index_add_(0, token, project_t(d_gate, gate) + project_t(dh * g * sig, up))
    return dx, dweights


_moe_experts_backward_op = torch.library.custom_op(
    "moeweave::moe_experts_backward", _moe_experts_backward, mutates_args=()
)


@_moe_experts_backward_op.register_fake
def _(x, topk_ids, topk_weights, table, grad):
    return torch.empty_like(grad), torch.empty_like(topk_weights, dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: torch.Tensor):
    x, topk_ids, topk_weights, table = ctx.saved_tensors
    dx, dweights = _moe_experts_backward_op(x, topk_ids, topk_weights, table, grad.float())
    return dx.to(x.dtype), None, dweights.to(topk_weights.dtype), None


_moe_experts_op.register_autograd(_backward, setup_context=_setup_context)
register_rows_vmap(_moe_experts_op, row_args=(0, 1, 2))
