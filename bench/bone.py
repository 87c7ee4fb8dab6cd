"""Bone / MiSS training step: moeweave.train.bone against PEFT's MissLinear, every mode.

One linear layer W [out, in] (--dtype fp32 or bf16, frozen, 4096 x 4096 and 11008 x 4096), r = 64
(mini_r = 64),
x [2048, in]: the time of one forward + backward (gradients for x and B) and the peak memory it
adds above the layer and its inputs. The limit of a bat step is its three products of the base
shape (y = x W'^T, dx = dy W', G = dy^T x), timed as plain torch.mm in the same run; default and
mini need only two (y, dx) plus a thin one. Each (system, mode, shape) runs in its own process,
so the peak resident set (ru_maxrss) is that configuration's alone; each is run in 3 interleaved
rounds with the limit, and the table shows medians.

    python bench/bone.py [--dtype bf16]
"""

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys

import peft
import torch
from common import Report, Row, median_seconds

from moeweave.train import bone

SHAPES = [(4096, 4096), (11008, 4096)]  # (out, in)
MODES = ("bat", "default", "mini")
PEFT_INIT = {"bat": "bat", "default": True, "mini": "mini"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
R, TOKENS = 64, 2048
ROUNDS = 3


class Layer(torch.nn.Module):
    def __init__(self, out_features: int, in_features: int, dtype: torch.dtype):
        super().__init__()
        self.proj = torch.nn.Linear(in_features, out_features, bias=False, dtype=dtype)

    def forward(self, x):
        return self.proj(x)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def one(system: str, mode: str, out_features: int, in_features: int, dtype: torch.dtype) -> dict:
    """Time and peak extra memory of one training step, measured in this process."""
    torch.manual_seed(0)
    base = Layer(out_features, in_features, dtype)
    if system == "moeweave":
        model = copy.deepcopy(base)
        bone.apply(model, r=R, mode=mode, target_modules=["proj"], mini_r=R)
    else:
        config = peft.MissConfig(r=R, init_weights=PEFT_INIT[mode], mini_r=R, target_modules=["proj"])
        model = peft.get_peft_model(copy.deepcopy(base), config)
    del base
    block = next(p for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        block.normal_(0, 0.01)
    x = torch.randn(TOKENS, in_features, dtype=dtype, requires_grad=True)
    dy = torch.randn(TOKENS, out_features, dtype=dtype)

    def step():
        x.grad = block.grad = None
        model(x).backward(dy)

    before = _rss_bytes()
    seconds = median_seconds(step, repeat=3, warmup=1, min_time=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"seconds": seconds, "peak_bytes": max(peak, 0)}


def limit_seconds(out_features: int, in_features: int, products: int, dtype: torch.dtype) -> float:
    x = torch.randn(TOKENS, in_features, dtype=dtype)
    w = torch.randn(out_features, in_features, dtype=dtype)
    dy = torch.randn(TOKENS, out_features, dtype=dtype)
    gemms = [lambda: x @ w.T, lambda: dy @ w, lambda: dy.T @ x][:products]
    return median_seconds(lambda: [g() for g in gemms], repeat=3, warmup=1, min_time=0)


def _median_run(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--one", nargs=4, metavar=("SYSTEM", "MODE", "OUT", "IN"))
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    if args.one:
        system, mode, out_features, in_features = args.one
        print(json.dumps(one(system, mode, int(out_features), int(in_features), dtype)))
        return
    report = Report(__file__, {})
    cpu = report.machine
    print(f"# {cpu['cpu']}, {cpu['cpus']} CPUs; {args.dtype}, r = {R}, {TOKENS} tokens, forward + backward\n")
    print(
        "| weight | mode | PEFT step | moeweave step | faster | of GEMM limit | PEFT peak | moeweave peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for out_features, in_features in SHAPES:
        for mode in MODES:
            # ROUNDS interleaved rounds of (PEFT, moeweave, GEMM limit), medians of each: this VM's
            # speed wanders by 20-30 % over minutes, and interleaving spreads that over all three.
            runs = {"peft": [], "moeweave": []}
            limits = []
            for _ in range(ROUNDS):
                for system in runs:
                    command = [sys.executable, __file__, "--dtype", args.dtype, "--one", system, mode]
                    command += [str(out_features), str(in_features)]
                    runs[system].append(
                        json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
                    )
                limits.append(limit_seconds(out_features, in_features, 3 if mode == "bat" else 2, dtype))
            results = {system: _median_run(found) for system, found in runs.items()}
            limit = statistics.median(limits)
            ours, theirs = results["moeweave"], results["peft"]
            print(
                f"| {out_features}x{in_features} | {mode} | {theirs['seconds'] * 1e3:.0f} ms "
                f"| {ours['seconds'] * 1e3:.0f} ms | {theirs['seconds'] / ours['seconds']:.2f}x "
                f"| {limit / ours['seconds']:.2f} | {theirs['peak_bytes'] / 2**20:.0f} MiB "
                f"| {ours['peak_bytes'] / 2**20:.0f} MiB |",
                flush=True,
            )
            report.rows.append(Row(f"bone {mode}", f"{out_features}x{in_features} {args.dtype} r={R} T={TOKENS}", ours["seconds"] * 1e3,
                                   "ms", "PEFT MiSS", theirs["seconds"] / ours["seconds"], limit / ours["seconds"]))  # fmt: skip
    report.finish()


if __name__ == "__main__":
    main()
