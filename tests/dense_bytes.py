"""The oracle of dense_bytes_per_token: the bytes a decode step reads outside the routed experts,
counted straight from a checkpoint's tensors (a helper module, so no test module imports
another)."""

import re

import torch
from transformers_oracle import PROJECTION_TENSOR

from moeweave.quant.policy import quantize_as

ROUTED_EXPERTS = re.compile(r"\.experts\.")  # shared experts are "shared_expert(s)."
EMBEDDING = "model.embed_tokens.weight"


def expected_dense_bytes(tensors: dict[str, torch.Tensor], projections: str, dtype: torch.dtype) -> int:
    """One row of the embedding, then every tensor but the routed experts and the embedding, in
    `dtype` or packed in the projection format; a tied output head is the embedding, packed."""
    size = torch.empty((), dtype=dtype).element_size()
    total = tensors[EMBEDDING].shape[1] * size
    names = [n for n in tensors if not ROUTED_EXPERTS.search(n) and n != EMBEDDING]
    if "lm_head.weight" not in tensors:
        names.append(EMBEDDING)
    for name in names:
        w = tensors[name]
        packed = projections != "float" and (PROJECTION_TENSOR.search(name) or name == EMBEDDING)
        total += quantize_as(w, projections).nbytes if packed else w.numel() * size
    return total
