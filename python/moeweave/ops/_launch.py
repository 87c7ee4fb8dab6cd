"""The one place where tensors cross into native code: DLPack capsules (zero-copy views of the
same memory) and, for CUDA tensors, the current stream of the tensor's device.
"""

import torch
from torch.utils.dlpack import to_dlpack


def capsules(*tensors: torch.Tensor) -> list:
    return [to_dlpack(t) for t in tensors]


def cuda_stream(tensor: torch.Tensor) -> int:
    return torch.cuda.current_stream(tensor.device).cuda_stream
