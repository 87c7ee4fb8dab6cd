"""How fast is moeweave::silu_mul against torch eager (F.silu(gate) * up, what transformers'
expert FFNs run), and how close does it get to memory bandwidth?

Two regimes: activations of one expert as they occur in decode and prefill (in cache: the op
cost is what matters), and a working set cycled over >= 4x L3 so every byte comes from DRAM,
where the STREAM triad measured in this run is the limit.

    python bench/silu_mul.py
"""

import torch
import torch.nn.functional as F
from common import L3_BYTES, Report, Row, cycling, median_seconds, stream_triad_gbps

from moeweave.ops import reference, silu_mul

IN_CACHE = [(1, 14336), (16, 14336), (128, 14336), (1, 768), (128, 768), (512, 1408)]
DRAM_SHAPE = (512, 14336)


def check(gate: torch.Tensor, up: torch.Tensor) -> None:
    tolerance = {"rtol": 8e-3, "atol": 1e-5} if gate.dtype == torch.bfloat16 else {"rtol": 2e-6, "atol": 1e-6}
    torch.testing.assert_close(silu_mul(gate, up), reference.silu_mul(gate, up), **tolerance)


def main() -> None:
    triad = stream_triad_gbps()
    report = Report(__file__, {"stream_triad_GBps": triad})
    report.header()
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for shape in IN_CACHE:
            gate = torch.randn(shape, generator=generator).to(dtype)
            up = torch.randn(shape, generator=generator).to(dtype)
            check(gate, up)
            ours = median_seconds(lambda gate=gate, up=up: silu_mul(gate, up))
            torch_eager = median_seconds(lambda gate=gate, up=up: F.silu(gate) * up)
            report.add(
                Row(
                    "silu_mul in-cache",
                    f"{list(shape)} {str(dtype)[6:]}",
                    ours * 1e6,
                    "us",
                    "torch eager",
                    torch_eager / ours,
                    None,
                )
            )

        # DRAM: cycle over enough distinct (gate, up) pairs that nothing stays in L3.
        per_pair = 2 * torch.Size(DRAM_SHAPE).numel() * dtype.itemsize
        pairs = [
            (
                torch.randn(DRAM_SHAPE, generator=generator).to(dtype),
                torch.randn(DRAM_SHAPE, generator=generator).to(dtype),
            )
            for _ in range(max(2, 4 * L3_BYTES // per_pair + 1))
        ]
        check(*pairs[0])
        ours = median_seconds(cycling(silu_mul, pairs))
        torch_eager = median_seconds(cycling(lambda g, u: F.silu(g) * u, pairs))
        moved = 1.5 * per_pair  # read gate and up, write out
        report.add(
            Row(
                "silu_mul DRAM",
                f"{list(DRAM_SHAPE)} {str(dtype)[6:]} x{len(pairs)}",
                moved / ours / 1e9,
                "GB/s",
                "torch eager",
                torch_eager / ours,
                moved / ours / 1e9 / triad,
            )
        )
    report.finish()


if __name__ == "__main__":
    main()
