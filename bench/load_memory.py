"""How much memory and time does loading take? Peak and steady resident memory above the
process's baseline (after `import torch, moeweave`) while loading a bf16 Qwen3-30B-A3B-shaped
checkpoint, against the checkpoint's bytes: moeweave with INT4 experts (default INT8 projections)
and with bf16 experts, and transformers' from_pretrained in bf16 as the baseline. The floor is
the steady size of what was loaded: a loader can peak no lower. Each load runs in a fresh
process, which resets the peak (/proc/self/clear_refs) after its imports and times the load
alone. By default the checkpoint's files are read once before, so every loader finds them in the
page cache; --cold drops the page cache before every load and before the timed read instead
(it needs root: /proc/sys/vm/drop_caches).

    python bench/load_memory.py [--layers 1] [--vocab 32000] [--cold]
"""

import argparse
import json
import os
import subprocess
import sys
import time

from common import RESULTS_DIR, bench_checkpoint, machine

LOADERS = {
    "moeweave int4 experts": "moeweave.models.load(path, experts='int4', dtype=torch.bfloat16)",
    "moeweave bf16 experts": "moeweave.models.load(path, experts='bf16', dtype=torch.bfloat16)",
    "transformers bf16": "transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)",
}

# Runs in the child: resident bytes now and at peak, from /proc/self/status.
CHILD = """
import sys, time, torch, moeweave.models, transformers
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
path = sys.argv[1]
open('/proc/self/clear_refs', 'w').write('5')  # resets VmHWM to the current size
base = status('VmRSS:')
start = time.perf_counter()
model = {loader}
seconds = time.perf_counter() - start
print(status('VmHWM:') - base, status('VmRSS:') - base, seconds)
"""


def measure(loader: str, path) -> tuple[int, int, float]:
    """(peak bytes, steady bytes, seconds) above the baseline of one load in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD.format(loader=loader), str(path)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    peak, steady, seconds = out.stdout.split()[-3:]
    return int(peak), int(steady), float(seconds)


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("1")


def read_seconds(path) -> float:
    """Seconds to read the checkpoint's files: no load can take less (the floor of the time
    column)."""
    start = time.perf_counter()
    buffer = bytearray(64 << 20)
    for file in path.glob("*.safetensors"):
        with open(file, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each load (root)")
    args = parser.parse_args()
    path = bench_checkpoint(args.layers, args.vocab)
    checkpoint = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    prepare = drop_page_cache if args.cold else lambda: None
    if not args.cold:
        read_seconds(path)  # into the page cache
    prepare()
    floor = read_seconds(path)
    where = "the disk (cold)" if args.cold else "the page cache"
    print(
        f"# {machine()['cpu']}: qwen3-30b-a3b shapes, {args.layers} layers, checkpoint {checkpoint >> 20} MiB bf16;"
        f" reading it from {where}: {floor:.2f} s"
    )
    print(f"{'loader':<24} {'peak MiB':>9} {'steady MiB':>10} {'peak/checkpoint':>15} {'peak/steady':>11}"
          f" {'load s':>7} {'load/read':>9}")  # fmt: skip
    rows = []
    for name, loader in LOADERS.items():
        prepare()
        peak, steady, seconds = measure(loader, path)
        rows.append({"loader": name, "peak": peak, "steady": steady, "checkpoint": checkpoint, "seconds": seconds,
                     "read_seconds": floor})  # fmt: skip
        print(f"{name:<24} {peak >> 20:>9} {steady >> 20:>10} {peak / checkpoint:>15.2f} {peak / steady:>11.2f}"
              f" {seconds:>7.2f} {seconds / floor:>9.2f}", flush=True)  # fmt: skip
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / "load_memory.jsonl", "a") as out:
        out.write(
            json.dumps({"machine": machine(), "layers": args.layers, "cold": args.cold, "rows": rows}) + "\n"
        )


if __name__ == "__main__":
    main()
