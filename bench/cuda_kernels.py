"""How close do moeweave's CUDA kernels come to the GPU's memory bandwidth, and how do they compare
with torch's own CUDA kernels on the same shapes?

Decode reads every weight once per token, so a GEMV's limit is its weight bytes over the device's
read bandwidth (measured here: torch's sum over a 2 GiB buffer; a device-to-device copy, bytes
read plus written, is reported beside it). Each timed call reads a different copy of the weights,
cycling over >= 8x the L2 cache, so every figure is an HBM figure; the calls are captured in one
CUDA graph, so Python's launch cost stays out.

Several activation rows are timed on both paths of quant_matmul, the CUDA kernel and the
dequantise + cuBLAS GEMM (moeweave.ops.prefill_gemm), whichever its thresholds pick by default:
where they cross is where those thresholds lie.

    python bench/cuda_kernels.py        (needs a CUDA GPU; bench/gpu_check.sh runs it on a lent one)
"""

import math
import statistics

import torch
import torch.nn.functional as F
from common import Report, Row

from moeweave.ops import moe_experts, prefill_gemm, quant_matmul
from moeweave.quant import ExpertTable, quantize

GEMV_SHAPES = {"mixtral w1": (14336, 4096), "mixtral w2": (4096, 14336), "qwen3 expert": (768, 2048)}
ROWS = (1, 4, 8, 16, 64, 512)
KERNEL_MAX_ROWS, GEMM_MIN_ROWS = 64, 4  # the row counts each path is timed at
DEFAULT_GEMM_ROWS = prefill_gemm.CUDA_GEMM_ROWS, prefill_gemm.CUDA_GEMM_ROWS_INT8
# Qwen3-30B-A3B's MoE layer: 128 experts of 768 x 2048, top-8.
MOE_EXPERTS, MOE_HIDDEN, MOE_INTER, MOE_TOP_K = 128, 2048, 768, 8


def eager_seconds(calls: list, repeat: int = 20) -> float:
    """Median seconds per call of `calls` (closures) launched one after another from Python."""
    return _median_per_call(lambda: [call() for call in calls], len(calls), repeat)


def graph_seconds(calls: list, repeat: int = 20) -> float:
    """Median seconds per call of `calls`, captured in one CUDA graph and replayed; eager (and
    said so) where a call cannot be captured."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for call in calls:
                call()
    except RuntimeError as error:
        print(f"# not capturable, timed eagerly: {str(error).splitlines()[0]}")
        return eager_seconds(calls, repeat)
    return _median_per_call(graph.replay, len(calls), repeat)


def _median_per_call(run, calls: int, repeat: int) -> float:
    run()
    samples = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(samples)


def copy_gbps() -> float:
    source = torch.randint(0, 255, (1 << 31,), dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    seconds = graph_seconds([lambda: target.copy_(source)])
    return 2 * source.numel() / seconds / 1e9


def read_gbps() -> float:
    source = torch.rand(1 << 29, device="cuda")
    seconds = graph_seconds([lambda: source.sum()])
    return 4 * source.numel() / seconds / 1e9


def copies(nbytes: int) -> int:
    return max(2, math.ceil(8 * torch.cuda.get_device_properties(0).L2_cache_size / nbytes))


def tinygemm_int4(n: int, k: int, group: int, x: torch.Tensor) -> list | None:
    """torch's CUDA int4 kernel (tinygemm, what torchao's int4 weight-only uses) over copies of a
    random [n, k] weight; None where this torch build lacks it."""
    try:
        q = torch.randint(0, 255, (n, k // 2), dtype=torch.uint8, device="cuda")
        packed = torch.ops.aten._convert_weight_to_int4pack(q, 8)
        scales = torch.rand(k // group, n, 2, device="cuda").to(torch.bfloat16)
        weights = [(packed.clone(), scales.clone()) for _ in range(copies(packed.numel()))]
        return [lambda p=p, s=s: torch.ops.aten._weight_int4pack_mm(x, p, group, s) for p, s in weights]
    except (RuntimeError, AttributeError) as error:
        print(f"# torch int4 (tinygemm) unavailable: {error}")
        return None


def bench_gemv(report: Report, limit: float) -> None:
    generator = torch.Generator().manual_seed(0)
    for name, (n, k) in GEMV_SHAPES.items():
        w = torch.randn(n, k, generator=generator) / k**0.5
        dense = w.to("cuda", torch.bfloat16)
        dense_copies = [dense.clone() for _ in range(copies(dense.numel() * 2))]
        for bits in (4, 8):
            qw = quantize(w, bits=bits, group_size=64)
            ours = [qw.to("cuda") for _ in range(copies(qw.nbytes))]
            for m in ROWS:
                x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
                config = f"{name} {n}x{k} M={m} int{bits} g64"
                bf16 = graph_seconds([lambda d=d, x=x: F.linear(x, d) for d in dense_copies])
                int4 = tinygemm_int4(n, k, 64, x) if bits == 4 else None
                theirs = None if int4 is None else graph_seconds(int4)
                for path, rows in (("kernel", m <= KERNEL_MAX_ROWS), ("dequant+cuBLAS", m >= GEMM_MIN_ROWS)):
                    if not rows:
                        continue
                    threshold = 1 << 30 if path == "kernel" else 1
                    prefill_gemm.CUDA_GEMM_ROWS = prefill_gemm.CUDA_GEMM_ROWS_INT8 = threshold
                    seconds = graph_seconds([lambda q=q, x=x: quant_matmul(x, q) for q in ours])
                    gbps = qw.nbytes / seconds / 1e9
                    op = f"quant_matmul {path}"
                    report.add(
                        Row(op, config, gbps, "GB/s", "torch bf16 F.linear", bf16 / seconds, gbps / limit)
                    )
                    if theirs is not None:
                        report.add(Row(op, config, gbps, "GB/s", "torch int4 tinygemm", theirs / seconds,
                                       gbps / limit))  # fmt: skip
    prefill_gemm.CUDA_GEMM_ROWS, prefill_gemm.CUDA_GEMM_ROWS_INT8 = DEFAULT_GEMM_ROWS


def expert_loop(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, dense: list) -> torch.Tensor:
    """transformers' eager MoE: each (token, expert) pair through bf16 F.linear."""
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for slot in range(ids.shape[1]):
            gate, up, down = dense[int(ids[t, slot])]
            h = F.silu(F.linear(x[t], gate)) * F.linear(x[t], up)
            y[t] += weights[t, slot].to(x.dtype) * F.linear(h, down)
    return y


def bench_moe(report: Report, limit: float) -> None:
    generator = torch.Generator().manual_seed(1)
    shapes = ((MOE_INTER, MOE_HIDDEN), (MOE_INTER, MOE_HIDDEN), (MOE_HIDDEN, MOE_INTER))
    source = [
        tuple(torch.randn(*s, generator=generator) / s[1] ** 0.5 for s in shapes) for _ in range(MOE_EXPERTS)
    ]
    table = ExpertTable([tuple(quantize(w, bits=4, group_size=64).to("cuda") for w in e) for e in source])
    dense = [tuple(w.to("cuda", torch.bfloat16) for w in e) for e in source]
    expert_bytes = table.nbytes / MOE_EXPERTS
    for tokens in (1, 16):
        x = torch.randn(tokens, MOE_HIDDEN, device="cuda").to(torch.bfloat16)
        routes = []
        for _ in range(32):
            weights, ids = (
                torch.rand(tokens, MOE_EXPERTS, generator=generator).softmax(-1).topk(MOE_TOP_K, -1)
            )
            routes.append((ids.to(torch.int32).cuda(), weights.cuda()))
        calls = [lambda i=i, w=w, x=x: moe_experts(x, i, w, table) for i, w in routes]
        seconds, eager = graph_seconds(calls), eager_seconds(calls)
        cpu_routes = [(i.cpu(), w.cuda()) for i, w in routes]
        loop = eager_seconds([lambda i=i, w=w, x=x: expert_loop(x, i, w, dense) for i, w in cpu_routes])
        touched = statistics.mean(len(set(i.flatten().tolist())) for i, _ in cpu_routes)
        gbps = touched * expert_bytes / seconds / 1e9
        config = f"qwen3 layer T={tokens} top-{MOE_TOP_K} int4 g64"
        report.add(
            Row("moe_experts", config, gbps, "GB/s", "torch bf16 expert loop", loop / seconds, gbps / limit)
        )
        report.add(Row("moe_experts", config, gbps, "GB/s", "the op launched from Python", eager / seconds,
                       gbps / limit))  # fmt: skip


def main() -> None:
    limit = read_gbps()
    report = Report(__file__, {"device_read_GBps": limit, "device_copy_GBps": copy_gbps()})
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    report.header()
    bench_gemv(report, limit)
    bench_moe(report, limit)
    report.finish()


if __name__ == "__main__":
    main()
