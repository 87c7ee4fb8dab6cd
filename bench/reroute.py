"""How fast is moeweave::reroute against the same lookup written in torch (advanced indexing,
as a Python serving stack would do it), for batches from one decode token to a large prefill?

    python bench/reroute.py
"""

import torch
from common import Report, Row, median_seconds, stream_triad_gbps

from moeweave.ops import reference, reroute

NUM_EXPERTS, TOP_K, NUM_ADAPTERS = 64, 6, 16  # DeepSeek-V2-Lite's layer, 16 ESFT adapters loaded


def torch_indexing(topk_ids, tok_adapter, remap):
    return remap[(tok_adapter.long() + 1).unsqueeze(1), topk_ids.long()]


def main() -> None:
    triad = stream_triad_gbps()
    report = Report(__file__, {"stream_triad_GBps": triad})
    report.header()
    generator = torch.Generator().manual_seed(0)
    remap = torch.arange(NUM_EXPERTS, dtype=torch.int32).repeat(NUM_ADAPTERS + 1, 1)  # [A + 1, E]
    tuned = torch.rand(NUM_ADAPTERS, NUM_EXPERTS, generator=generator) < 0.1
    remap[1:][tuned] = torch.arange(NUM_EXPERTS, NUM_EXPERTS + int(tuned.sum()), dtype=torch.int32)
    for tokens in (1, 64, 4096, 1 << 20):
        topk_ids = torch.randint(0, NUM_EXPERTS, (tokens, TOP_K), generator=generator, dtype=torch.int32)
        tok_adapter = torch.randint(-1, NUM_ADAPTERS, (tokens,), generator=generator, dtype=torch.int32)
        assert torch.equal(
            reroute(topk_ids, tok_adapter, remap), reference.reroute(topk_ids, tok_adapter, remap)
        )
        ours = median_seconds(lambda ids=topk_ids, a=tok_adapter: reroute(ids, a, remap))
        baseline = median_seconds(lambda ids=topk_ids, a=tok_adapter: torch_indexing(ids, a, remap))
        moved = (2 * tokens * TOP_K + tokens) * 4  # ids in, phys ids out, adapters in
        limit = moved / ours / 1e9 / triad if moved > 16 * (1 << 20) else None  # only meaningful from DRAM
        report.add(
            Row(
                "reroute",
                f"T={tokens} K={TOP_K} E={NUM_EXPERTS} A={NUM_ADAPTERS}",
                ours * 1e6,
                "us",
                "torch indexing",
                baseline / ours,
                limit,
            )
        )
    report.finish()


if __name__ == "__main__":
    main()
