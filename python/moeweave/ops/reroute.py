"""``moeweave::reroute``: fused batched rerouting of tokens to their request's adapter experts
(ExpertWeave).

Shapes: topk_ids [T, K] int32 (base expert ids from the frozen router), tok_adapter [T] int32
(adapter slot of each token's request, -1 = base model), remap [A + 1, E] int32 (row 0 is the
identity; row a + 1 maps base expert e to the physical slot of adapter a's copy, or to e)
-> phys_ids [T, K] int32. Routing weights are untouched.

Out-of-range inputs: on CPU a ValueError names the first offending entry; on CUDA the kernel
writes -1 there instead, because checking would synchronise the host and break graph capture.
"""

import torch

from moeweave import _native
from moeweave.ops import reference
from moeweave.ops._eager import can_skip_dispatcher
from moeweave.ops._launch import capsules, cuda_stream
from moeweave.ops._vmap import register_rows_vmap


def _check(topk_ids: torch.Tensor, tok_adapter: torch.Tensor, remap: torch.Tensor) -> None:
    for name, tensor, ndim in (
        ("topk_ids", topk_ids, 2),
        ("tok_adapter", tok_adapter, 1),
        ("remap", remap, 2),
    ):
        if tensor.dtype != torch.int32:
            raise ValueError(f"reroute: '{name}' must be int32, got {tensor.dtype}")
        if tensor.dim() != ndim:
            raise ValueError(f"reroute: '{name}' must have {ndim} dims, got {list(tensor.shape)}")
        if tensor.device != topk_ids.device:
            raise ValueError(
                f"reroute: '{name}' is on {tensor.device} but 'topk_ids' is on {topk_ids.device}"
            )
    if tok_adapter.shape[0] != topk_ids.shape[0]:
        raise ValueError(
            f"reroute: 'tok_adapter' must have one entry per token ({topk_ids.shape[0]}), "
            f"got {list(tok_adapter.shape)}"
        )
    if remap.shape[0] < 1:
        raise ValueError(f"reroute: 'remap' must have at least the identity row, got {list(remap.shape)}")


def reroute(topk_ids: torch.Tensor, tok_adapter: torch.Tensor, remap: torch.Tensor) -> torch.Tensor:
    """phys_ids[t, k] = remap[tok_adapter[t] + 1, topk_ids[t, k]]; [T, K] int32."""
    if can_skip_dispatcher(topk_ids, tok_adapter, remap):
        return _reroute(topk_ids, tok_adapter, remap)
    return _reroute_op(topk_ids, tok_adapter, remap)


def _reroute(topk_ids: torch.Tensor, tok_adapter: torch.Tensor, remap: torch.Tensor) -> torch.Tensor:
    _check(topk_ids, tok_adapter, remap)
    topk_ids, tok_adapter, remap = topk_ids.contiguous(), tok_adapter.contiguous(), remap.contiguous()
    out = torch.empty_like(topk_ids)  # [T, K]
    if out.numel() == 0:
        return out
    native = _native.module_for(topk_ids.device.type)
    if native is None:
        return reference.reroute(topk_ids, tok_adapter, remap)
    if topk_ids.is_cuda:
        with torch.cuda.device(topk_ids.device):
            native.reroute(*capsules(topk_ids, tok_adapter, remap, out), cuda_stream(topk_ids))
    else:
        native.reroute(*capsules(topk_ids, tok_adapter, remap, out))
    return out


_reroute_op = torch.library.custom_op("moeweave::reroute", _reroute, mutates_args=())


@_reroute_op.register_fake
def _(topk_ids: torch.Tensor, tok_adapter: torch.Tensor, remap: torch.Tensor) -> torch.Tensor:
    _check(topk_ids, tok_adapter, remap)
    return torch.empty_like(topk_ids, memory_format=torch.contiguous_format)


register_rows_vmap(_reroute_op, row_args=(0, 1))
