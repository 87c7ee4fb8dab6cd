"""``moeweave::bone_bat_linear``: a linear layer under Bone's block-affine ("bat") adapter,
y = x W'^T + bias with W'_ij = W_ij (I + B_i) + B_i for every r x r block W_ij of W (block row i,
block column j), without ever holding W' whole.

Shapes: x [..., in], weight W [out, in] (frozen, x's dtype), block B [out/r, r, r], bias [out] or
None -> y [..., out]; in and out multiples of r. Differentiable in x and B (W and the bias are
frozen: they get no gradient).

A native kernel (bone_bat_form, CPU and CUDA) forms W' one panel of whole blocks at a time, in
fp32 rounded once to x's dtype, and each panel goes straight into torch's GEMM (oneDNN, AMX where
present, on CPU; cuBLAS on CUDA): a panel is about PANEL_BYTES, so the extra memory is one panel
instead of PEFT's whole W' and its gradient, and forming it costs r / T of its product's flops.
- forward: row panels of W' give column slices of y;
- backward: dx = dy W' by column panels of W', each a whole column slice of dx (every product sums
  over all of out at once, nothing accumulates across panels); G = dy^T x by row panels, and
  dB_i = sum_j (W_ij + I)^T G_ij natively in fp32 (bone_bat_block_grad).
float64 (gradcheck) and a missing native module form the same panels in plain torch.

``moeweave::bone_bat_weight`` gives W' itself, for fused expert tensors whose product is not ours
(transformers' experts take W' as a tensor): W [..., out, in] and B [..., out/r, r, r] (leading
dims: experts) -> W' [..., out, in], formed by the same native kernel one matrix at a time, and its
backward is bone_bat_block_grad on dW' (no autograd graph of the r x r products).

Dimension legend: T tokens (the flattened leading dims of x), r block size, P panel rows,
C panel columns.
"""

import torch
import torch.nn.functional as F

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._frozen_linear import check_frozen, check_linear, register_frozen_linear
from moeweave.ops._launch import capsules, cuda_stream

PANEL_BYTES = 8 << 20
_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def bone_bat_linear(
    x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., in] -> [..., out] through W' (see the module docstring)."""
    _check(x, weight, block, bias)
    return _bat_op(x, weight, block, bias)


def _check(x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None) -> None:
    check_linear("bone_bat_linear", x, weight, bias)
    _check_blocks("bone_bat_linear", weight, block)
    if x.dtype != weight.dtype:
        raise ValueError(
            f"bone_bat_linear: 'x' must have the dtype of 'weight' ({weight.dtype}), got {x.dtype}"
        )


def _check_blocks(op: str, weight: torch.Tensor, block: torch.Tensor) -> None:
    """weight [..., out, in] and block [..., out/r, r, r] with the same leading dims."""
    *lead, out_features, in_features = weight.shape
    r = block.shape[-1] if block.dim() else 0
    expected = [*lead, out_features // max(r, 1), r, r]
    if r < 1 or list(block.shape) != expected or out_features % r or in_features % r:
        raise ValueError(
            f"{op}: a weight of shape {list(weight.shape)} needs in and out divisible by r and "
            f"'block' [..., out/r, r, r] with the weight's leading dims, got {list(block.shape)}"
        )


def _spans(length: int, other: int, r: int, itemsize: int) -> list[tuple[int, int]]:
    """(start, size) of each panel along a dim of `length`: multiples of r, each panel (times the
    `other` dim) about PANEL_BYTES."""
    step = max(r, PANEL_BYTES // (itemsize * other) // r * r)
    return [(start, min(step, length - start)) for start in range(0, length, step)]


def _sums(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """B in the dtype W' is formed and dB summed in: fp32 (fp64 for fp64 weights)."""
    return block.to(torch.promote_types(weight.dtype, torch.float32)).contiguous()


def _native_module(weight: torch.Tensor):
    return _native.module_for(weight.device.type) if weight.dtype in _NATIVE_DTYPES else None


def _run_native(native, name: str, *tensors: torch.Tensor) -> None:
    if tensors[0].is_cuda:
        with torch.cuda.device(tensors[0].device):
            getattr(native, name)(*capsules(*tensors), cuda_stream(tensors[0]))
    else:
        getattr(native, name)(*capsules(*tensors))


def _as_blocks(rows: torch.Tensor, r: int) -> torch.Tensor:
    """[P, C] -> its r x r blocks [P/r, C/r, r, r] (block row i, block column j), a view."""
    return rows.reshape(rows.shape[0] // r, r, -1, r).transpose(1, 2)


def _form(
    weight: torch.Tensor, blocks: torch.Tensor, rows: slice, cols: slice, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The W' tile [rows, cols] (whole blocks) in the weight's dtype, written to `out` (a buffer of
    the tile's shape, rows may be strided) or a new tensor; blocks: _sums(B)."""
    r = blocks.shape[-1]
    w = weight[rows, cols]
    b = blocks[rows.start // r : rows.stop // r]
    if out is None:
        out = torch.empty(w.shape, dtype=weight.dtype, device=weight.device)
    native = _native_module(weight)
    if native is None:
        return out.copy_(reference.bone_bat_weight(w.to(b.dtype), b))
    _run_native(native, "bone_bat_form", w, b, out)
    return out


def _block_grad(weight_rows: torch.Tensor, grad: torch.Tensor, dblock: torch.Tensor) -> None:
    """dblock [P/r, r, r] (the sums dtype) = sum over j of (W_ij + I)^T G_ij for the block rows of
    weight_rows [P, in] and grad G [P, in]."""
    native = _native_module(weight_rows)
    if native is not None:
        _run_native(native, "bone_bat_block_grad", weight_rows, grad, dblock)
        return
    r = dblock.shape[-1]
    w = _as_blocks(weight_rows.to(dblock.dtype), r)  # [P/r, in/r, r, r]
    g = _as_blocks(grad.to(dblock.dtype), r)
    dblock.copy_((w.transpose(-1, -2) @ g + g).sum(1))


def _bat_forward(
    x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    out_features, in_features = weight.shape
    blocks = _sums(weight, block)
    y = x.new_empty(*x.shape[:-1], out_features)  # [..., out]
    for start, rows in _spans(out_features, in_features, block.shape[-1], x.element_size()):
        panel = _form(weight, blocks, slice(start, start + rows), slice(0, in_features))  # [P, in]
        y[..., start : start + rows] = F.linear(
            x, panel, None if bias is None else bias[start : start + rows]
        )
    return y


def _bat_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx [..., in], dB [out/r, r, r]) of bone_bat_linear for the output gradient dy [..., out]."""
    out_features, in_features = weight.shape
    r = block.shape[-1]
    blocks = _sums(weight, block)
    xs = x.reshape(-1, in_features)  # [T, in]
    dys = dy.reshape(-1, out_features).to(x.dtype)  # [T, out]
    dx = torch.empty(xs.shape, dtype=x.dtype, device=x.device)
    for start, cols in _spans(in_features, out_features, r, x.element_size()):
        panel = _form(weight, blocks, slice(0, out_features), slice(start, start + cols))  # [out, C]
        dx[:, start : start + cols] = dys @ panel
    dy_t = dys.t().contiguous()  # [out, T]: each row panel of G is then one plain product
    dblock = torch.empty(block.shape, dtype=blocks.dtype, device=block.device)
    for start, rows in _spans(out_features, in_features, r, x.element_size()):
        grad = dy_t[start : start + rows] @ xs  # [P, in]: G's rows
        _block_grad(weight[start : start + rows], grad, dblock[start // r : (start + rows) // r])
    return dx.view_as(x), dblock.to(block.dtype)


_bat_op = register_frozen_linear("bone_bat_linear", _bat_forward, _bat_backward)


def bone_bat_weight(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """W' [..., out, in] of W [..., out, in] (frozen) and B [..., out/r, r, r]; differentiable in B."""
    if weight.dim() < 2:
        raise ValueError(f"bone_bat_weight: 'weight' must be [..., out, in], got shape {list(weight.shape)}")
    _check_blocks("bone_bat_weight", weight, block)
    check_frozen("bone_bat_weight", weight=weight)
    return _weight_op(weight, block)


def _matrices(tensor: torch.Tensor, dims: int) -> torch.Tensor:
    """The stack of a tensor's trailing `dims`-dim items, leading dims flattened: [N, ...]."""
    return tensor.reshape(-1, *tensor.shape[tensor.dim() - dims :])


def _weight_forward(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    out_features, in_features = weight.shape[-2:]
    formed = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    matrices = zip(
        _matrices(weight, 2), _matrices(_sums(weight, block), 3), _matrices(formed, 2), strict=True
    )
    for w, b, out in matrices:
        _form(w, b, slice(0, out_features), slice(0, in_features), out)
    return formed


_weight_op = torch.library.custom_op("moeweave::bone_bat_weight", _weight_forward, mutates_args=())


@_weight_op.register_fake
def _(weight, block):
    return weight.new_empty(weight.shape)


def _weight_backward(grad: torch.Tensor, weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """dB [..., out/r, r, r] of bone_bat_weight for dW' grad [..., out, in]."""
    dblock = torch.empty(block.shape, dtype=_sums(weight, block).dtype, device=block.device)
    grads = _matrices(grad.to(weight.dtype), 2)
    for w, g, db in zip(_matrices(weight, 2), grads, _matrices(dblock, 3), strict=True):
        _block_grad(w, g, db)
    return dblock.to(block.dtype)


_weight_backward_op = torch.library.custom_op(
    "moeweave::bone_bat_weight_backward", _weight_backward, mutates_args=()
)


@_weight_backward_op.register_fake
def _(grad, weight, block):
    return block.new_empty(block.shape)


def _save_weight_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _weight_grads(ctx, grad):
    weight, block = ctx.saved_tensors
    return None, _weight_backward_op(grad.contiguous(), weight, block)


_weight_op.register_autograd(_weight_grads, setup_context=_save_weight_inputs)
