"""A first look at the op pattern: run each native op on a realistic input, check it against
its plain-torch twin and time both. ``moeweave demo`` prints the result.
"""

import time

import torch

from moeweave import ops
from moeweave.ops import reference


def _median_seconds(fn, repeat: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    # One Mixtral expert's activation for a 64-token prefill: [T=64, I=14336] bf16.
    gate = torch.randn(64, 14336, generator=generator).bfloat16()
    up = torch.randn(64, 14336, generator=generator).bfloat16()
    ours, twin = ops.silu_mul(gate, up), reference.silu_mul(gate, up)
    error = (ours.float() - twin.float()).abs().max().item()
    t_ours = _median_seconds(lambda: ops.silu_mul(gate, up))
    t_torch = _median_seconds(lambda: torch.nn.functional.silu(gate) * up)
    print(
        f"silu_mul  [64, 14336] bf16: max |ours - reference| = {error:.3g}; "
        f"{t_ours * 1e6:.0f} us vs torch eager {t_torch * 1e6:.0f} us ({t_torch / t_ours:.2f}x)"
    )

    # 256 tokens of 4 requests over 8 adapters of a 64-expert layer, top-6 routing.
    topk_ids = torch.randint(0, 64, (256, 6), generator=generator, dtype=torch.int32)
    tok_adapter = torch.randint(-1, 8, (256,), generator=generator, dtype=torch.int32)
    remap = torch.arange(64, dtype=torch.int32).repeat(9, 1)  # [A + 1, E]
    remap[1:, ::7] += 64  # each adapter tuned every 7th expert into its own slots
    same = torch.equal(
        ops.reroute(topk_ids, tok_adapter, remap), reference.reroute(topk_ids, tok_adapter, remap)
    )
    t_ours = _median_seconds(lambda: ops.reroute(topk_ids, tok_adapter, remap))
    t_torch = _median_seconds(lambda: reference.reroute(topk_ids, tok_adapter, remap))
    print(
        f"reroute   [256, 6] ids, 8 adapters: equal to reference: {same}; "
        f"{t_ours * 1e6:.0f} us vs torch indexing {t_torch * 1e6:.0f} us ({t_torch / t_ours:.2f}x)"
    )
