"""``moeweave::bone_bat_linear``: a linear layer under Bone's block-affine ("bat") adapter,
y = x W'^T + bias with W'_ij = W_ij (I + B_i) + B_i for every r x r block W_ij of W (block row i,
block column j), without ever holding W' whole.

Shapes: x [..., in], weight W [out, in] (frozen), block B [out/r, r, r], bias [out] or None ->
y [..., out]; in and out multiples of r. Differentiable in x and B (W and the bias are frozen:
they get no gradient).

W' is formed a panel of block rows at a time (about PANEL_BYTES of it, in fp32) and multiplied at
once, in the forward and again in the backward, so the extra memory is one panel instead of PEFT's
whole W' plus its gradient; forming a panel costs r / T of its product's flops. The backward per
panel: dx += dy_p W'_p, and with G = dy_p^T x [rows, in], dB_i = sum_j (W_ij^T G_ij + G_ij).

Dimension legend: T tokens (the flattened leading dims of x), r block size, P panel rows.
"""

import torch
import torch.nn.functional as F

PANEL_BYTES = 8 << 20


def bone_bat_linear(
    x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., in] -> [..., out] through W' (see the module docstring)."""
    _check(x, weight, block, bias)
    return _bat_op(x, weight, block, bias)


def _check(x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.dim() != 2:
        raise ValueError(f"bone_bat_linear: 'weight' must be [out, in], got shape {list(weight.shape)}")
    out_features, in_features = weight.shape
    if block.dim() != 3 or block.shape[1] != block.shape[2]:
        raise ValueError(f"bone_bat_linear: 'block' must be [out/r, r, r], got shape {list(block.shape)}")
    r = block.shape[-1]
    if out_features % r or in_features % r or block.shape[0] != out_features // r:
        raise ValueError(
            f"bone_bat_linear: a weight of shape {list(weight.shape)} needs in and out divisible by "
            f"r = {r} and 'block' [{out_features // r}, {r}, {r}], got {list(block.shape)}"
        )
    if x.shape[-1] != in_features:
        raise ValueError(f"bone_bat_linear: 'x' must end in {in_features} features, got {list(x.shape)}")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"bone_bat_linear: 'bias' must be [{out_features}], got {list(bias.shape)}")


def _panels(weight: torch.Tensor, r: int) -> list[tuple[int, int]]:
    """(start row, rows) of each panel: multiples of r, about PANEL_BYTES of fp32 W' each."""
    step = max(r, PANEL_BYTES // (4 * weight.shape[1]) // r * r)
    return [(start, min(step, weight.shape[0] - start)) for start in range(0, weight.shape[0], step)]


def _as_blocks(rows: torch.Tensor, r: int) -> torch.Tensor:
    """[P, in] -> its r x r blocks [P/r, in/r, r, r] (block row i, block column j), a view."""
    return rows.view(rows.shape[0] // r, r, -1, r).transpose(1, 2)


def _panel_weight(weight: torch.Tensor, block: torch.Tensor, start: int, rows: int) -> torch.Tensor:
    """W' rows [start, start + rows) in fp32 (fp64 for fp64 inputs): [rows, in]."""
    r = block.shape[-1]
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w = _as_blocks(weight[start : start + rows].to(dtype), r)  # [P/r, in/r, r, r]
    b = block[start // r : (start + rows) // r].to(dtype)[:, None]  # [P/r, 1, r, r]
    merged = torch.matmul(w, b).add_(w).add_(b)  # W_ij B_i + W_ij + B_i
    return merged.transpose(1, 2).reshape(rows, -1)


def _bat_forward(
    x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    y = x.new_empty(*x.shape[:-1], weight.shape[0])  # [..., out]
    for start, rows in _panels(weight, block.shape[-1]):
        panel = _panel_weight(weight, block, start, rows).to(x.dtype)
        y[..., start : start + rows] = F.linear(
            x, panel, None if bias is None else bias[start : start + rows]
        )
    return y


_bat_op = torch.library.custom_op("moeweave::bone_bat_linear", _bat_forward, mutates_args=())


@_bat_op.register_fake
def _(x, weight, block, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _bat_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx [..., in], dB [out/r, r, r]) of bone_bat_linear for the output gradient dy [..., out]."""
    r = block.shape[-1]
    dtype = torch.promote_types(weight.dtype, torch.float32)
    # The two big products per panel run in x's dtype (bf16 on AMX); sums over panels and the
    # r x r algebra run in fp32.
    xs = x.reshape(-1, x.shape[-1])  # [T, in]
    dys = dy.reshape(-1, dy.shape[-1]).to(x.dtype)  # [T, out]
    dx = torch.zeros(xs.shape, dtype=dtype, device=x.device)
    dblock = torch.empty(block.shape, dtype=dtype, device=block.device)
    for start, rows in _panels(weight, r):
        dy_panel = dys[:, start : start + rows]  # [T, P]
        panel = _panel_weight(weight, block, start, rows).to(x.dtype)
        if dx.dtype == x.dtype:
            dx.addmm_(dy_panel, panel)
        else:
            dx += dy_panel @ panel
        grad = _as_blocks((dy_panel.T @ xs).to(dtype), r)  # [P/r, in/r, r, r]: G_ij
        w = _as_blocks(weight[start : start + rows].to(dtype), r)
        dblock[start // r : (start + rows) // r] = (w.transpose(-1, -2) @ grad + grad).sum(1)
    return dx.to(x.dtype).view_as(x), dblock.to(block.dtype)


_bat_backward_op = torch.library.custom_op(
    "moeweave::bone_bat_linear_backward", _bat_backward, mutates_args=()
)


@_bat_backward_op.register_fake
def _(dy, x, weight, block):
    return torch.empty_like(x), torch.empty_like(block)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, block, _ = inputs
    ctx.save_for_backward(x, weight, block)


def _backward(ctx, dy):
    x, weight, block = ctx.saved_tensors
    dx, dblock = _bat_backward_op(dy.contiguous(), x, weight, block)
    return dx, None, dblock, None


_bat_op.register_autograd(_backward, setup_context=_setup_context)
