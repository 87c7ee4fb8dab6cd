"""Does quant_matmul stream packed expert weights at memory bandwidth, and how does it compare
with torch's CPU kernels on the same shapes? And does the fused MoE op cost no more than the
matmuls it contains?

Every configuration cycles over enough distinct weight matrices that the working set is >= 4x
the L3 cache, as an MoE decode does, so every figure is a DRAM figure. Reported per (shape, M,
bits): weight bytes read per second, the ratio to the STREAM triad bandwidth measured just
before that shape, and speed ratios against fp32 and bf16 torch.matmul, torch's _weight_int8pack_mm and
_weight_int4pack_mm_for_cpu on the same shape and M; at M = 1 also the bytes per second of
torch's int4 kernel itself, which bounds what any speed-up over it can be.

    python bench/quant_gemv.py            # all shapes (several minutes)
    python bench/quant_gemv.py --quick    # two shapes, M in {1, 16}
"""

import argparse

import torch
from common import L3_BYTES, Report, Row, cycling, median_seconds, stream_triad_gbps

from moeweave.ops import moe_experts, quant_matmul
from moeweave.quant import ExpertTable, QuantizedWeight, quantize

SHAPES = {  # expert projections [N, K]
    "mixtral-w1": (14336, 4096),
    "mixtral-w2": (4096, 14336),
    "qwen3-30b-a3b": (768, 2048),
    "deepseek-v2-lite": (1408, 2048),
    "olmoe": (1024, 2048),
}
GROUP = 64


def copies_for(nbytes: int) -> int:
    """Distinct matrices needed for a working set of >= 4x L3."""
    return max(2, -(-4 * L3_BYTES // nbytes))


def clone(qw: QuantizedWeight) -> QuantizedWeight:
    zeros = None if qw.zeros is None else qw.zeros.clone()
    return QuantizedWeight(qw.packed.clone(), qw.scales.clone(), zeros, qw.n, qw.k, qw.bits, qw.group_size)


def torch_baselines(n: int, k: int, m: int, generator: torch.Generator) -> dict[str, float]:
    """Seconds per call of torch's kernels on [m, k] x [n, k]^T, each over its own DRAM working set."""
    x32 = torch.randn(m, k, generator=generator)
    x16 = x32.bfloat16()
    out = {}
    fp32 = [(torch.randn(n, k, generator=generator),) for _ in range(copies_for(n * k * 4))]
    out["fp32 matmul"] = median_seconds(cycling(lambda w: x32 @ w.t(), fp32))
    del fp32
    bf16 = [(torch.randn(n, k, generator=generator).bfloat16(),) for _ in range(copies_for(n * k * 2))]
    out["bf16 matmul"] = median_seconds(cycling(lambda w: x16 @ w.t(), bf16))
    del bf16
    int8 = [
        (torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator), torch.rand(n).bfloat16())
        for _ in range(copies_for(n * k))
    ]
    out["torch int8pack"] = median_seconds(
        cycling(lambda w, s: torch.ops.aten._weight_int8pack_mm(x16, w, s), int8)
    )
    del int8
    values = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 2)
    int4 = [(packed.clone(), torch.rand(k // GROUP, n, 2).bfloat16()) for _ in range(copies_for(n * k // 2))]
    out["torch int4pack"] = median_seconds(
        cycling(lambda w, sz: torch.ops.aten._weight_int4pack_mm_for_cpu(x16, w, GROUP, sz), int4)
    )
    return out


def int4pack_bytes(n: int, k: int) -> int:
    """What _weight_int4pack_mm_for_cpu reads: the packed nibbles plus bf16 scales and zeros."""
    return n * k // 2 + (k // GROUP) * n * 2 * 2


def bench_matmuls(report: Report, shapes: dict, ms: list[int], generator: torch.Generator) -> None:
    for name, (n, k) in shapes.items():
        # The triad is remeasured per shape: on this shared VM it drifts by 2x within minutes,
        # and a ratio is only meaningful against the bandwidth of the same moment.
        triad = stream_triad_gbps()
        print(f"# triad before {name}: {triad:.1f} GB/s", flush=True)
        for m in ms:
            baselines = torch_baselines(n, k, m, generator)
            x = torch.randn(m, k, generator=generator)
            for bits in (2, 3, 4, 8):
                # Timing does not depend on the values, so RTN on one matrix, then copies.
                qw = quantize(
                    torch.randn(n, k, generator=generator), bits=bits, group_size=GROUP, method="rtn"
                )
                weights = [(clone(qw),) for _ in range(copies_for(qw.nbytes))]
                seconds = median_seconds(cycling(lambda w, x=x: quant_matmul(x, w), weights))
                gbps = qw.nbytes / seconds / 1e9
                for baseline, base_seconds in baselines.items():
                    report.add(
                        Row(
                            f"quant_matmul int{bits}",
                            f"{name} [{n}x{k}] M={m}",
                            gbps,
                            "GB/s",
                            baseline,
                            base_seconds / seconds,
                            gbps / triad,
                        )
                    )
            if m == 1:  # how close torch's own int4 kernel comes to the bandwidth limit
                torch_gbps = int4pack_bytes(n, k) / baselines["torch int4pack"] / 1e9
                report.add(
                    Row("torch int4pack", f"{name} [{n}x{k}] M=1", torch_gbps, "GB/s", "itself", 1.0, torch_gbps / triad)
                )  # fmt: skip


def bench_moe(report: Report, generator: torch.Generator) -> None:
    """Qwen3-30B-A3B's MoE layer (128 experts of [768, 2048], top-8) at 4 bits."""
    triad = stream_triad_gbps()
    print(f"# triad before the MoE layer: {triad:.1f} GB/s", flush=True)
    hidden, inter, num_experts, top_k = 2048, 768, 128, 8
    base = [quantize(torch.randn(*shape, generator=generator), bits=4, group_size=GROUP, method="rtn")
            for shape in ((inter, hidden), (inter, hidden), (hidden, inter))]  # fmt: skip
    table = ExpertTable([tuple(clone(w) for w in base) for _ in range(num_experts)])
    for tokens in (1, 16):
        draws = []
        for _ in range(16):
            ids = (
                torch.rand(tokens, num_experts, generator=generator)
                .topk(top_k, dim=-1)
                .indices.to(torch.int32)
            )
            draws.append((torch.randn(tokens, hidden, generator=generator), ids, torch.rand(tokens, top_k)))
        fused = median_seconds(cycling(lambda x, ids, w: moe_experts(x, ids, w, table), draws))

        def separate(x, ids, w):
            for e in ids.unique().tolist():
                rows = (ids == e).any(dim=1)
                gate, up, down = table[e]
                xe = x[rows]
                quant_matmul(xe, gate)
                h = quant_matmul(xe, up)
                quant_matmul(h, down)

        matmuls = median_seconds(cycling(separate, draws))
        touched = sum(len(ids.unique()) for _, ids, _ in draws) / len(draws) * sum(w.nbytes for w in base)
        report.add(
            Row(
                "moe_experts int4",
                f"qwen3-30b-a3b layer T={tokens} top{top_k}",
                touched / fused / 1e9,
                "GB/s",
                "sum of its matmuls",
                matmuls / fused,
                touched / fused / 1e9 / triad,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, M in {1, 16}")
    args = parser.parse_args()
    shapes = {k: SHAPES[k] for k in ("qwen3-30b-a3b", "mixtral-w1")} if args.quick else SHAPES
    ms = [1, 16] if args.quick else [1, 4, 16, 128]
    triad = stream_triad_gbps()
    report = Report(__file__, {"stream_triad_GBps": triad})
    report.header()
    generator = torch.Generator().manual_seed(0)
    bench_matmuls(report, shapes, ms, generator)
    bench_moe(report, generator)
    report.finish()


if __name__ == "__main__":
    main()
