"""The engine's memory: on a checkpoint whose experts are 4x the budget, a fresh process's peak
resident memory while it opens the engine and generates stays within the budget plus the dense
weights plus a stated overhead, above what the process held after its imports."""

import json
import subprocess
import sys

from moeweave.store.manifest import load_manifest
from moeweave.store.writer import write_store

# Activations, the KV cache, read buffers and the allocator's slack (measured: 11 MiB here).
OVERHEAD_BYTES = 32 << 20

CHILD = r"""
import json, sys
from pathlib import Path
import torch
import moeweave.engine, moeweave.ops  # everything imported before the baseline
from moeweave.engine import Engine

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from here
baseline = status("VmRSS")
with Engine.open(sys.argv[1], memory_budget=int(sys.argv[2])) as engine:
    list(engine.generate_tokens([3, 5, 7, 11], max_new_tokens=8))
    peak_cache = engine.stats()["cache_peak_bytes"]
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "cache_peak": peak_cache}))
"""


def test_peak_rss_stays_within_budget_plus_dense_weights(tiny_checkpoint, tmp_path):
    checkpoint = tiny_checkpoint("qwen3_moe", hidden_size=256, moe_intermediate_size=512, num_experts=64,
                                 num_hidden_layers=4, mlp_only_layers=[], vocab_size=256)  # fmt: skip
    store = tmp_path / "store"
    write_store(checkpoint, store, progress=False)
    experts = sum(extent.length for extent in load_manifest(store).extents)
    dense = 4 * (store / "dense.safetensors").stat().st_size  # loaded as fp32 (at most 4 bytes an element)
    budget = experts // 4
    result = subprocess.run([sys.executable, "-c", CHILD, str(store), str(budget)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    memory = json.loads(result.stdout)
    assert memory["cache_peak"] <= budget
    assert memory["peak"] - memory["baseline"] <= budget + dense + OVERHEAD_BYTES, (memory, budget, dense)
