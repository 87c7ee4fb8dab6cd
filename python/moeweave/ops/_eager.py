"""The eager fast path shared by every op.

Going through ``torch.ops.moeweave.*`` costs about 7 us of Python dispatch per call (autograd
and dispatch-key wrappers of torch.library.custom_op), several times the kernel itself at decode
sizes. When nothing can observe the dispatcher — eager mode, no tensor needs a gradient, plain
tensors, no dispatch mode active, no functorch transform (vmap, grad) running — the public
functions call the implementation directly; in every other case they go through the op.
"""

import torch


def can_skip_dispatcher(*tensors: torch.Tensor) -> bool:
    if (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._functorch.peek_interpreter_stack() is not None
    ):
        return False
    grad = torch.is_grad_enabled()
    return all(type(t) is torch.Tensor and not (grad and t.requires_grad) for t in tensors)
