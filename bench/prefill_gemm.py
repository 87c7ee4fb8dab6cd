"""Where should a wide product of a packed weight run: on moeweave's integer kernels, or
dequantised panel by panel to bf16 and multiplied by torch's GEMM (moeweave.ops.prefill_gemm)?
And how close does that path come to the GEMM alone?

Per shape, bit width and row count M, three interleaved rounds of: quant_matmul on the integer
kernels, the dequantise-and-GEMM path, and torch's bf16 GEMM on an already-bf16 copy of the
weight (the limit: the same GEMM with no dequantisation); medians. Prefill is compute-bound, so
each weight stays in cache. Reported: the GEMM path's GFLOP/s, its speed over the integer
kernels, and its fraction of the bf16 GEMM alone. prefill_gemm.GEMM_ROWS is chosen from this.
OMP_WAIT_POLICY=PASSIVE as the moeweave command sets it (spinning OpenMP workers would take the
integer kernels' cores).

    python bench/prefill_gemm.py
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics

import torch
from common import Report, Row, median_seconds

from moeweave import _native, cpu
from moeweave.ops import prefill_gemm, quant_matmul
from moeweave.quant import dequantize, quantize

SHAPES = {  # [N, K]
    "4096x4096": (4096, 4096),
    "qwen3-30b-a3b q_proj": (4096, 2048),
    "qwen3-30b-a3b o_proj": (2048, 4096),
    "qwen3-30b-a3b k_proj": (512, 2048),
    "mixtral-8x7b w1": (14336, 4096),
}
ROUNDS = 3


def seconds_per_path(qw, x: torch.Tensor, w16: torch.Tensor) -> dict[str, float]:
    """Medians over ROUNDS interleaved rounds; quant_matmul runs on the integer kernels (main
    raises GEMM_ROWS out of reach) and the GEMM path is called directly, so it is measured on CPUs
    where quant_matmul would not take it."""
    native = _native.module_for("cpu")
    paths = {
        "integer kernels": lambda: quant_matmul(x, qw),
        "dequantise + GEMM": lambda: prefill_gemm.dequantized_gemm(native, x, qw),
        "bf16 GEMM alone": lambda: x @ w16.t(),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, run in paths.items():
            times[name].append(median_seconds(run, repeat=5))
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    args = parser.parse_args()
    if not cpu.has_amx_bf16():
        print("# this CPU has no AMX-BF16: quant_matmul never takes the GEMM path here; measuring it anyway")
    report = Report(__file__, {})
    report.header()
    generator = torch.Generator().manual_seed(0)
    chosen, prefill_gemm.GEMM_ROWS = prefill_gemm.GEMM_ROWS, 1 << 62
    try:
        for name, (n, k) in SHAPES.items():
            w = torch.randn(n, k, generator=generator)
            for bits in (4, 8):
                qw = quantize(w, bits=bits, group_size=64, method="rtn")
                w16 = dequantize(qw).bfloat16()
                for m in args.rows:
                    x = torch.randn(m, k, generator=generator).bfloat16()
                    t = seconds_per_path(qw, x, w16)
                    gemm = t["dequantise + GEMM"]
                    report.add(
                        Row(
                            f"dequantise + GEMM int{bits}",
                            f"{name} M={m}",
                            2 * m * n * k / gemm / 1e9,
                            "GFLOP/s",
                            "integer kernels",
                            t["integer kernels"] / gemm,
                            t["bf16 GEMM alone"] / gemm,
                        )
                    )
    finally:
        prefill_gemm.GEMM_ROWS = chosen
    report.finish()


if __name__ == "__main__":
    main()
