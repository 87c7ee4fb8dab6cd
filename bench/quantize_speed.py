"""How fast does moeweave quantise a checkpoint's weights? Loading a bf16 checkpoint with packed
experts quantises every expert projection, so this is most of a load's time. The native
quantiser (moeweave.quant.quantize on a CPU tensor) against the plain-torch one it replaced
(moeweave.quant.quantize._quantize_torch, still the reference and the CUDA path), on bf16
projections of real shapes: round-to-nearest for int8 and int4, the MSE clipping search (21
clippings per group) for int3 and int2. Limit: reading the bf16 weight and writing the packed
bytes once at the STREAM triad measured in the same run.

    python bench/quantize_speed.py
"""

from functools import partial

import torch
from common import Report, Row, median_seconds, stream_triad_gbps

from moeweave.quant.policy import GROUP_SIZE, QUANTISED_BITS, SYMMETRIC_FROM, quantize_as
from moeweave.quant.quantize import _quantize_torch

SHAPES = {
    "Mixtral-8x7B expert up": (14336, 4096),
    "Qwen3-30B-A3B expert up": (768, 2048),
}


def main() -> None:
    triad = stream_triad_gbps()
    report = Report(__file__, {"stream_triad_GBps": triad})
    report.header()
    generator = torch.Generator().manual_seed(0)
    for label, (n, k) in SHAPES.items():
        w = torch.randn(n, k, generator=generator).to(torch.bfloat16)
        for name, bits in QUANTISED_BITS.items():
            method = "mse" if bits <= 3 else "rtn"
            ours = median_seconds(partial(quantize_as, w, name), repeat=5, warmup=1)
            reference = partial(
                _quantize_torch, w, bits, GROUP_SIZE, bits >= SYMMETRIC_FROM, torch.bfloat16, method
            )
            torch_path = median_seconds(reference, repeat=5, warmup=1)
            moved = w.numel() * w.element_size() + quantize_as(w, name).nbytes
            config = f"{label} [{n}x{k}] {name} {method}"
            limit = moved / (triad * 1e9) / ours
            report.add(Row("quantize", config, ours * 1e3, "ms", "torch quantiser", torch_path / ours, limit))
    report.finish()


if __name__ == "__main__":
    main()
