"""How fast is a prompt's causal attention on moeweave's attention op (what the models run on CPU)
against torch's scaled_dot_product_attention (what transformers runs), and against the compute
limit? Random bf16 q, k, v of real head layouts, a causal mask, one sequence. Limit: the
multiply-adds a causal attention needs (2 products of S^2 / 2 x d per head) over the rate of a
large matmul measured in the same run: bf16 where the op multiplies bf16 pairs (AVX512-BF16 at
the avx512 level), else fp32 as the op then computes.

    python bench/prefill_attention.py [--lengths 512 2048 4096]
"""

import argparse
from functools import partial

import torch
import torch.nn.functional as F
from common import Report, Row, median_seconds

import moeweave.cpu
from moeweave.ops import attention

# name: (query heads, key/value heads, dk, dv)
LAYOUTS = {
    "Qwen3-30B-A3B 32/4 x 128": (32, 4, 128, 128),
    "Mixtral-8x7B 32/8 x 128": (32, 8, 128, 128),
    "DeepSeek-V2-Lite MLA 16/16 x 192/128": (16, 16, 192, 128),
}


def matmul_flops(dtype: torch.dtype) -> float:
    """FLOP/s of a 2048^3 matmul in `dtype` on torch's threads."""
    a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    return 2 * 2048**3 / median_seconds(lambda: a @ b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    args = parser.parse_args()
    pairs = moeweave.cpu.current_isa() == "avx512" and moeweave.cpu.has_avx512_bf16()
    peak = matmul_flops(torch.bfloat16 if pairs else torch.float32)
    report = Report(__file__, {f"{'bf16' if pairs else 'fp32'} matmul GFLOP/s": peak / 1e9})
    report.header()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for label, (heads, kv_heads, dk, dv) in LAYOUTS.items():
            for length in args.lengths:
                q = torch.randn(1, heads, length, dk, generator=generator).bfloat16()
                k = torch.randn(1, kv_heads, length, dk, generator=generator).bfloat16()
                v = torch.randn(1, kv_heads, length, dv, generator=generator).bfloat16()
                mask = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
                ours = median_seconds(partial(attention, q, k, v, mask), repeat=5, warmup=1)
                gqa = heads != kv_heads
                sdpa = median_seconds(
                    partial(F.scaled_dot_product_attention, q, k, v, is_causal=True, enable_gqa=gqa),
                    repeat=5,
                    warmup=1,
                )
                flops = heads * length * length * (dk + dv)  # 2 FLOP per multiply-add, half the keys
                config = f"{label}, S={length}, causal"
                report.add(
                    Row("attention", config, ours * 1e3, "ms", "torch SDPA", sdpa / ours, flops / peak / ours)
                )
    report.finish()


if __name__ == "__main__":
    main()
