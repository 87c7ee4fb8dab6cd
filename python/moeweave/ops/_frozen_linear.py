"""Registration shared by the Bone linear ops (moeweave::bone_bat_linear, bone_shard_linear): an
op (x [..., in], weight [out, in], block, bias [out] or None) -> y [..., out] whose weight and bias
are frozen, with its fake and with autograd through a second op, <name>_backward
(dy, x, weight, block) -> (dx like x, dB like block)."""

import torch


def check_linear(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """weight [out, in], x [..., in], bias [out] or None."""
    if weight.dim() != 2:
        raise ValueError(f"{op}: 'weight' must be [out, in], got shape {list(weight.shape)}")
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"{op}: 'x' must end in {in_features} features, got {list(x.shape)}")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"{op}: 'bias' must be [{out_features}], got {list(bias.shape)}")
    check_frozen(op, weight=weight, bias=bias)


def check_frozen(op: str, **tensors: torch.Tensor | None) -> None:
    """The ops give no gradient to the base weights: one that asks for it is refused, not ignored."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{op}: '{name}' is frozen (it gets no gradient); detach it or set requires_grad=False"
            )


def register_frozen_linear(name: str, forward, backward):
    """The custom op moeweave::<name> of forward(x, weight, block, bias), differentiable in x and
    block through backward(dy, x, weight, block)."""
    op = torch.library.custom_op(f"moeweave::{name}", forward, mutates_args=())
    op.register_fake(lambda x, weight, block, bias: x.new_empty(*x.shape[:-1], weight.shape[0]))
    backward_op = torch.library.custom_op(f"moeweave::{name}_backward", backward, mutates_args=())
    backward_op.register_fake(
        lambda dy, x, weight, block: (x.new_empty(x.shape), block.new_empty(block.shape))
    )

    def setup_context(ctx, inputs, output) -> None:
        x, weight, block, _ = inputs
        ctx.save_for_backward(x, weight, block)

    def grads(ctx, dy):
        x, weight, block = ctx.saved_tensors
        dx, dblock = backward_op(dy.contiguous(), x, weight, block)
        return dx, None, dblock, None

    op.register_autograd(grads, setup_context=setup_context)
    return op
