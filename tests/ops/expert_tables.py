"""Random expert tables and routings for the MoE op's tests (a helper module, so no test module
imports another)."""

import torch

from moeweave.quant import ExpertTable, quantize


def random_table(num_experts: int, hidden: int, inter: int, formats, seed: int = 0) -> ExpertTable:
    """Expert e in format formats[e % len(formats)]: 16 is bf16, else that many bits (group 32,
    asymmetric at 2 bits)."""
    generator = torch.Generator().manual_seed(seed)
    experts = []
    for e in range(num_experts):
        bits = formats[e % len(formats)]
        weights = [torch.randn(inter, hidden, generator=generator) / hidden**0.5,
                   torch.randn(inter, hidden, generator=generator) / hidden**0.5,
                   torch.randn(hidden, inter, generator=generator) / inter**0.5]  # fmt: skip
        if bits == 16:
            experts.append(tuple(w.bfloat16() for w in weights))
        else:
            experts.append(tuple(quantize(w, bits=bits, group_size=32, sym=bits != 2) for w in weights))
    return ExpertTable(experts)


def random_routing(
    tokens: int, top_k: int, num_experts: int, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [T, K] int32, softmax weights [T, K])."""
    generator = torch.Generator().manual_seed(seed)
    weights, ids = torch.rand(tokens, num_experts, generator=generator).softmax(-1).topk(top_k, dim=-1)
    return ids.to(torch.int32), weights
