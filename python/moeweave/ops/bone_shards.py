"""``moeweave::bone_shard_linear``: a linear layer under Bone's "default" (MiSS balance) or "mini"
adapter, y = x W^T + bias + shards(x) @ tile(B).

Shapes: x [..., in], weight W [out, in] (frozen), block B [r, width] with width = out ("default")
or width = mini_r dividing out ("mini", B repeated out / width times along out), bias [out] or None
-> y [..., out]. shards(x) [..., r] zero-pads x to a multiple of r and sums its r-wide shards
(reference.bone_shards). Differentiable in x and B.

The adapter's part is thin next to the base GEMM (2 T r width flops against 2 T in out), so it
stays in torch; the op exists for its backward, which builds dx without padding it, never repeats
B along out and saves only x: with dy folded over B's repeats, dy_f [..., width] = sum of dy's width-wide slices,
  dB = shards(x)^T dy_f,   dx = dy W + (dy_f B^T) added to every r-wide shard of dx.

Dimension legend: T tokens (the flattened leading dims of x), r shard width.
"""

import torch
import torch.nn.functional as F

from moeweave.ops import reference
from moeweave.ops._frozen_linear import check_linear, register_frozen_linear


def bone_shard_linear(
    x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [..., in] -> [..., out] (see the module docstring)."""
    _check(x, weight, block, bias)
    return _shard_op(x, weight, block, bias)


def _check(x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None) -> None:
    check_linear("bone_shard_linear", x, weight, bias)
    if block.dim() != 2 or weight.shape[0] % block.shape[1]:
        raise ValueError(
            f"bone_shard_linear: 'block' must be [r, width] with width dividing out = {weight.shape[0]}, "
            f"got shape {list(block.shape)}"
        )


def _forward(
    x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    out_features, in_features = weight.shape
    r, width = block.shape
    xs = x.reshape(-1, in_features)  # [T, in]
    y = F.linear(xs, weight, bias)  # [T, out]
    shards = reference.bone_shards(xs, r)  # [T, r]
    if width == out_features:
        y.addmm_(shards, block.to(x.dtype))
    else:
        y.view(-1, out_features // width, width).add_((shards @ block.to(x.dtype)).unsqueeze(1))
    return y.view(*x.shape[:-1], out_features)


def _backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx [..., in], dB [r, width]) for the output gradient dy [..., out]."""
    out_features, in_features = weight.shape
    r, width = block.shape
    xs = x.reshape(-1, in_features)  # [T, in]
    dys = dy.reshape(-1, out_features).to(x.dtype)  # [T, out]
    folded = dys if width == out_features else dys.view(-1, out_features // width, width).sum(1)  # [T, width]
    dblock = reference.bone_shards(xs, r).T @ folded  # [r, width]
    dx = dys @ weight  # [T, in]
    per_shard = folded @ block.to(x.dtype).T  # [T, r]
    whole = in_features // r * r
    if whole:
        dx[:, :whole].view(-1, in_features // r, r).add_(per_shard.unsqueeze(1))
    dx[:, whole:].add_(per_shard[:, : in_features - whole])
    return dx.view_as(x), dblock.to(block.dtype)


_shard_op = register_frozen_linear("bone_shard_linear", _forward, _backward)
