"""`moeweave run --expert-parallel`, one process per rank under torchrun: every rank holds its
slice of the routed experts (moeweave.models.expert_parallel) and continues its own prompt (rank
r the r-th --prompt, cycling); each prints its text, then what the expert exchange cost it."""

import os
from pathlib import Path

import torch
import torch.distributed as dist

from moeweave.models import load


def run(args, path: Path, prompts: list[str], sampling: dict, dtype: torch.dtype) -> None:
    if "RANK" not in os.environ:
        raise ValueError("--expert-parallel runs one process per rank: start it with torchrun")
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        model = load(path, experts=args.experts, dtype=dtype, projections=args.projections,
                     expert_parallel=dist.group.WORLD)  # fmt: skip
        if model.tokenizer is None:
            raise ValueError(f"{path} has no tokenizer.json, so a text prompt cannot be encoded")
        prompt = prompts[rank % len(prompts)]
        result = model.generate(prompt, **sampling, seed=args.seed + rank)
        provider = model.expert_parallel()
        stats, steps = provider.stats, len(result.tokens)
        print(
            f"# rank {rank} of {world}: experts {provider.held.start}..{provider.held.stop - 1} of each layer\n"
            f"{prompt}{result.text}\n"
            f"# rank {rank}: {steps} new tokens at {result.decode_tokens_per_second:.1f} tokens/s; "
            f"{stats.sent_off_rank} of {stats.assignments} expert assignments sent to other ranks, "
            f"{stats.bytes_sent / 1024:.0f} KiB sent, {stats.communication_seconds * 1e3:.0f} ms in the "
            f"exchange against {stats.compute_seconds * 1e3:.0f} ms of expert compute",
            flush=True,
        )
    finally:
        dist.destroy_process_group()
