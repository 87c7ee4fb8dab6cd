"""The vmap rule of every op: each op computes row by row over the leading dim of some of its
tensor arguments (its "row" arguments: x of a matmul, the tokens of the MoE stage, the batch of
attention), so a vmapped dim is folded into that leading dim and the op runs once. Ops that take
any number of leading dims (elementwise ones, rms_norm) get the vmapped dim as one more. When an
argument the rows share (a weight, cos/sin, the remap table) is itself batched, the op runs once
per batch entry instead.
"""

from collections.abc import Sequence

import torch


def register_rows_vmap(op, row_args: Sequence[int], leading_dims_free: bool = False) -> None:
    """Register the rule for a torch.library custom op whose positional arguments `row_args`
    share their leading dim and whose output has that same leading dim. With leading_dims_free,
    the op takes any number of leading dims and the vmapped dim is passed as one more."""
    rows = frozenset(row_args)

    def rule(info, in_dims, *args):
        if any(d is not None for i, d in enumerate(in_dims) if i not in rows):
            return _per_entry(op, info.batch_size, in_dims, args)
        batched = [
            (a.movedim(d, 0) if d is not None else a.expand(info.batch_size, *a.shape)) if i in rows else a
            for i, (a, d) in enumerate(zip(args, in_dims, strict=True))
        ]
        if leading_dims_free:
            return op(*batched), 0
        count = batched[row_args[0]].shape[1]
        out = op(*(a.flatten(0, 1) if i in rows else a for i, a in enumerate(batched)))  # [batch * rows, ...]
        return out.unflatten(0, (info.batch_size, count)), 0

    op.register_vmap(rule)


def _per_entry(op, batch_size: int, in_dims, args):
    results = [
        op(*(a if d is None else a.select(d, b) for a, d in zip(args, in_dims, strict=True)))
        for b in range(batch_size)
    ]
    return torch.stack(results), 0
