"""Training over a frozen quantised MoE base: what does the forward + backward of one expert stage
cost on moeweave's INT4 fused op, against transformers' own bf16 expert stage of the same shape?

Per (shape, tokens): seconds of one forward + backward (gradients of the hidden states and the
routing weights; expert weights frozen on both sides) and the peak resident memory while it runs
(the layer's experts included; measured in a fresh process per run, with the kernel's peak-RSS
counter reset once the experts are built), for
  - moeweave: moe_experts on an INT4 ExpertTable (group 64), x in bf16;
  - transformers: Qwen3MoeExperts with bf16 parameters, experts_implementation "eager" (a loop
    over experts) and "grouped_mm" (one grouped GEMM);
and the physical limit of the moeweave run: the expert bytes it must read (forward, recomputed
forward and transposed products: 3 passes over the used experts' INT4 bytes) at the STREAM triad
bandwidth measured in the same run.

    python bench/quant_backward.py           # two layer shapes x two token counts (a few minutes)
"""

import argparse
import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch
from common import Report, Row, median_seconds, stream_triad_gbps

SHAPES = {  # experts, hidden, intermediate, experts per token
    "qwen3-30b-a3b": (128, 2048, 768, 8),
    "olmoe": (64, 2048, 1024, 8),
}
TOKENS = (16, 256)
IMPLEMENTATIONS = ("moeweave-int4", "eager", "grouped_mm")


def _routing(tokens: int, experts: int, top_k: int):
    generator = torch.Generator().manual_seed(1)
    weights, ids = torch.rand(tokens, experts, generator=generator).softmax(-1).topk(top_k, dim=-1)
    return ids, weights


def _transformers_experts(experts: int, hidden: int, inter: int, implementation: str):
    import transformers

    config = transformers.Qwen3MoeConfig(
        hidden_size=hidden, moe_intermediate_size=inter, num_experts=experts, num_hidden_layers=1
    )
    config._experts_implementation = implementation
    module = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeExperts(config).bfloat16()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / hidden**0.5)
            p.requires_grad_(False)
    return lambda x, ids, w: module(x, ids, w)


def _moeweave_experts(experts: int, hidden: int, inter: int):
    from moeweave.ops import moe_experts
    from moeweave.quant import ExpertTable
    from moeweave.quant.policy import quantize_as

    generator = torch.Generator().manual_seed(0)
    table = ExpertTable(
        [
            tuple(
                quantize_as(torch.randn(*shape, generator=generator) / hidden**0.5, "int4")
                for shape in ((inter, hidden), (inter, hidden), (hidden, inter))
            )
            for _ in range(experts)
        ]
    )
    return (lambda x, ids, w: moe_experts(x, ids.to(torch.int32), w, table)), table.nbytes / experts


def _reset_peak_rss() -> None:
    """Return freed heap to the system, then restart the kernel's peak-RSS count (VmHWM) from now."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_one(shape: str, tokens: int, implementation: str) -> dict:
    """Runs in a fresh process: seconds of forward + backward, and the process's peak RSS."""
    experts, hidden, inter, top_k = SHAPES[shape]
    if implementation == "moeweave-int4":
        stage, expert_bytes = _moeweave_experts(experts, hidden, inter)
    else:
        stage, expert_bytes = _transformers_experts(experts, hidden, inter, implementation), 0
    ids, weights = _routing(tokens, experts, top_k)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(2)).bfloat16().requires_grad_()
    weights = weights.requires_grad_()

    def step():
        x.grad = weights.grad = None
        stage(x, ids, weights).float().sum().backward()

    _reset_peak_rss()
    seconds = median_seconds(step, repeat=5, warmup=1, min_time=0.2)
    used = int(ids.unique().numel())
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "bytes_read": 3 * used * expert_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--one", nargs=3, metavar=("SHAPE", "TOKENS", "IMPLEMENTATION"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        shape, tokens, implementation = args.one
        print(json.dumps(measure_one(shape, int(tokens), implementation)))
        return
    report = Report(__file__, {"stream_gbps": stream_triad_gbps()})
    report.header()
    for shape in SHAPES:
        for tokens in TOKENS:
            runs = {}
            for implementation in IMPLEMENTATIONS:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", shape, str(tokens), implementation],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                runs[implementation] = json.loads(out.stdout.splitlines()[-1])
            ours = runs["moeweave-int4"]
            limit_seconds = ours["bytes_read"] / (report.limits["stream_gbps"] * 1e9)
            config = f"{shape} T={tokens}"
            for baseline in IMPLEMENTATIONS[1:]:
                theirs = runs[baseline]
                report.add(Row("fwd+bwd time", config, ours["seconds"] * 1e3, "ms", f"bf16 {baseline}",
                               theirs["seconds"] / ours["seconds"], limit_seconds / ours["seconds"]))  # fmt: skip
                report.add(Row("fwd+bwd peak RSS", config, ours["peak_rss_mb"], "MB", f"bf16 {baseline}",
                               theirs["peak_rss_mb"] / ours["peak_rss_mb"], None))  # fmt: skip
    report.finish()


if __name__ == "__main__":
    main()
