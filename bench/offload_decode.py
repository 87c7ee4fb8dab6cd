"""Experts on SSD under a RAM budget: how fast does the on-device engine decode, against reading
experts on demand, against everything in RAM, and against transformers + accelerate's disk
offload under the same budget?

Checkpoint: the Qwen3-30B-A3B layer shapes (128 experts of 768, top-8) with random weights and
as many layers as make its INT4 experts >= 4x the budget (bench/common.py: bench_checkpoint),
converted once into an INT4 store. Each contestant runs in a fresh process after the page cache
is dropped; every offloading one runs in a memory cgroup (v1) limited to the budget + the dense
weights + a fixed process allowance, so a peer that reads through the page cache pays for its
reads from disk instead of keeping the file in RAM (accelerate also runs once without a limit:
a reference whose offloaded weights come from the page cache, i.e. from RAM). llama-bench style: pp (prompt tokens/s) and
tg (decode tokens/s), mean +- sd over the repetitions; and per decode token the engine's bytes
read, byte hit rate, stall share and roofline ratio (SPEC §1: the bound max(D / B_disk,
M / B_mem): Engine.roofline, which measures B_disk with the store's own O_DIRECT reader and
B_mem with a STREAM triad in each contestant's process after its run). The engine runs with the
stale gate and on demand, each also with the INT2 fallback (a copy written beside the store on
first use), whose quality cost is measured on the bundled trained model (held-out perplexity
through the engine, against lossless INT4 and all-INT2). Decoding samples at temperature 1
(seeded): greedy decoding of random weights repeats one token, so every step would route to the
same experts.

    python bench/offload_decode.py              # 7 layers, 480 MiB budget (several minutes)
    python bench/offload_decode.py --layers 4 --budget 400MiB --reps 2
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, bench_checkpoint, machine

CONTESTANTS = ("moeweave stale-gate", "moeweave on-demand", "moeweave stale-gate, INT2 fallback",
               "moeweave on-demand, INT2 fallback", "moeweave all in RAM", "accelerate disk offload",
               "accelerate, no memory limit")  # fmt: skip
FALLBACK_BITS = 2
VOCAB = 32000
# What a process holds besides weights: the interpreter, torch, buffers, activations.
PROCESS_ALLOWANCE = 640 << 20
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def memory_cgroup(limit: int | None):
    """A child cgroup (v1) limited to `limit` bytes, or None where there is none to make."""
    if limit is None or not CGROUP_ROOT.is_dir():
        yield None
        return
    group = CGROUP_ROOT / f"moeweave-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
    except OSError:
        yield None
        return
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def run_engine(name: str, store: Path, budget: int, prompt: list[int], tokens: int, reps: int) -> dict:
    from moeweave.engine import Engine

    with Engine.open(
        store,
        memory_budget=None if "RAM" in name else budget,
        predictor="none" if "on-demand" in name else "stale-gate",
        fallback="fallback" in name,
    ) as engine:
        pp, tg, telemetry = [], [], []
        for rep in range(reps):
            list(engine.generate_tokens(prompt, max_new_tokens=tokens, temperature=1.0, seed=rep))
            steps = engine.per_token
            pp.append(len(prompt) / steps[0].step_seconds)
            tg.append((len(steps) - 1) / sum(s.step_seconds for s in steps[1:]))
            telemetry.extend(steps[1:])
        return {
            "pp": pp, "tg": tg,
            "byte_hit_rate": sum(s.hit_bytes for s in telemetry) / sum(s.expert_bytes_needed for s in telemetry),
            "stall_share": sum(s.stall_seconds for s in telemetry) / sum(s.step_seconds for s in telemetry),
            "prefetch_precision": sum(s.prefetches_used for s in telemetry) / max(1, sum(s.prefetches for s in telemetry)),
            "peak_rss": engine.stats()["peak_rss_bytes"],  # before the roofline's own buffers
            "roofline": engine.roofline(telemetry),
        }  # fmt: skip


def fallback_quality(budget_share: float = 0.25, tokens: int = 2048) -> dict:
    """The quality cost of the low-bit fallback, on the bundled (trained) model: held-out
    perplexity through the engine at a budget of `budget_share` of its experts, with misses read
    from the INT4 store (lossless) or its INT2 copy, and of the model all at INT2 (the floor)."""
    from tokenizers import Tokenizer

    from moeweave.engine import Engine, store_for
    from moeweave.engine.calibration import calibration_text, mean_loss, perplexity, token_chunks
    from moeweave.models.bundled import DEMO_MODEL_DIR
    from moeweave.store.manifest import load_manifest

    tokenizer = Tokenizer.from_file(str(DEMO_MODEL_DIR / "tokenizer.json"))
    chunks = token_chunks(tokenizer, calibration_text(DEMO_MODEL_DIR, None), tokens)
    budget = int(sum(e.length for e in load_manifest(store_for(DEMO_MODEL_DIR)).extents) * budget_share)
    out = {}
    for name, fallback, memory_budget in (("INT4", False, budget), ("INT4, INT2 fallback", True, budget),
                                          ("INT2 all in RAM", True, None)):  # fmt: skip
        # All in RAM with the fallback and no prediction: every expert's first read is its INT2 copy.
        with Engine.open(
            DEMO_MODEL_DIR, memory_budget=memory_budget, predictor="none", fallback=fallback
        ) as engine:
            out[name] = perplexity(mean_loss(engine.model, chunks))
    return out


def run_accelerate(checkpoint: Path, budget: int, prompt: list[int], tokens: int, reps: int) -> dict:
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as offload:
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint,
            dtype=torch.bfloat16,
            device_map="auto",
            max_memory={"cpu": budget},
            offload_folder=offload,
        ).eval()
        ids = torch.tensor([prompt])
        pp, tg = [], []
        with torch.no_grad():
            for rep in range(reps):
                generator = torch.Generator().manual_seed(rep)
                start = time.perf_counter()
                out = model(ids, use_cache=True)
                pp.append(len(prompt) / (time.perf_counter() - start))
                cache, token = out.past_key_values, sample(out.logits, generator)
                start = time.perf_counter()
                for _ in range(tokens - 1):
                    out = model(token, past_key_values=cache, use_cache=True)
                    cache, token = out.past_key_values, sample(out.logits, generator)
                tg.append((tokens - 1) / (time.perf_counter() - start))
        from moeweave.engine.engine import peak_rss

        return {"pp": pp, "tg": tg, "peak_rss": peak_rss()}


def sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The next token [1, 1] at temperature 1, as the engine's contestants sample."""
    return torch.multinomial(torch.softmax(logits[0, -1].float(), -1), 1, generator=generator).view(1, 1)


def child(args) -> None:
    prompt = torch.randint(0, VOCAB, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    if args.one.startswith("accelerate"):
        result = run_accelerate(Path(args.checkpoint), args.budget_bytes, prompt, args.tokens, args.reps)
    else:
        result = run_engine(args.one, Path(args.store), args.budget_bytes, prompt, args.tokens, args.reps)
    print(json.dumps(result))


def contest(name: str, args, limit: int | None) -> tuple[dict | None, str]:
    dropped = drop_page_cache()
    command = [sys.executable, __file__, "--one", name, "--checkpoint", str(args.checkpoint), "--store",
               str(args.store), "--budget-bytes", str(args.budget_bytes), "--tokens", str(args.tokens),
               "--prompt", str(args.prompt), "--reps", str(args.reps)]  # fmt: skip
    with memory_cgroup(limit) as group:
        procs = None if group is None else group / "cgroup.procs"
        enter = None if procs is None else (lambda: procs.write_text(str(os.getpid())))
        result = subprocess.run(command, capture_output=True, text=True, preexec_fn=enter)
    where = ("page cache dropped" if dropped else "page cache NOT dropped") + (
        ""
        if limit is None
        else (f", cgroup {limit >> 20} MiB" if group is not None else ", NO cgroup (not possible here)")
    )
    if result.returncode != 0:
        return (
            None,
            f"{where}; failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}",
        )
    return json.loads(result.stdout.splitlines()[-1]), where


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--budget", default="480MiB")
    parser.add_argument("--tokens", type=int, default=24, help="tg: new tokens per repetition")
    parser.add_argument("--prompt", type=int, default=32, help="pp: prompt tokens")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-accelerate", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--budget-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
        return
    from moeweave.engine import parse_size, store_for
    from moeweave.engine.fallback import DIRECTORY, write_fallback
    from moeweave.store.manifest import load_manifest

    args.budget_bytes = parse_size(args.budget)
    args.checkpoint = bench_checkpoint(args.layers, VOCAB)
    args.store = store_for(args.checkpoint, bits=4)
    if not (args.store / DIRECTORY).is_dir():
        write_fallback(args.checkpoint, args.store, FALLBACK_BITS)
    extents = load_manifest(args.store).extents
    expert_bytes = sum(e.length for e in extents)
    dense_bytes = (args.store / "dense.safetensors").stat().st_size
    if expert_bytes < 4 * args.budget_bytes:
        print(f"# note: experts {expert_bytes >> 20} MiB are < 4x the budget; use more --layers")
    layers = len({e.layer for e in extents})
    print(f"# {machine()['cpu']}: experts {expert_bytes >> 20} MiB ({layers} layers), dense {dense_bytes >> 20} MiB, "
          f"budget {args.budget_bytes >> 20} MiB")  # fmt: skip
    limit = args.budget_bytes + dense_bytes + PROCESS_ALLOWANCE
    rows = []
    for name in CONTESTANTS:
        if name.startswith("accelerate") and args.skip_accelerate:
            continue
        unlimited = "RAM" in name or "no memory limit" in name  # references: RAM serves every read
        result, where = contest(name, args, None if unlimited else limit)
        rows.append((name, result, where))
        if result is None:
            print(f"{name:<26} {where}", flush=True)
            continue
        line = f"{name:<26} pp{args.prompt} {mean_sd(result['pp']):>14}  tg{args.tokens} {mean_sd(result['tg']):>13}"
        if "roofline" in result:
            roofline = result["roofline"]
            line += (f"  read {roofline['bytes_read_per_token'] / 2**20:6.1f} MiB/tok  hit {result['byte_hit_rate']:.0%}  "
                     f"stall {result['stall_share']:.0%}  roofline {roofline['ratio']:.2f} (disk "
                     f"{roofline['disk_bytes_per_second'] / 1e9:.2f} GB/s, memory {roofline['memory_bytes_per_second'] / 1e9:.1f} GB/s)")  # fmt: skip
        print(f"{line}  peak RSS {result['peak_rss'] >> 20} MiB  ({where})", flush=True)
    quality = fallback_quality()
    print("# quality cost of the fallback, bundled model, held-out perplexity: "
          + ", ".join(f"{name} {value:.3f}" for name, value in quality.items()))  # fmt: skip
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / "offload_decode.jsonl", "a") as out:
        out.write(json.dumps({"machine": machine(), "budget": args.budget_bytes, "expert_bytes": expert_bytes,
                              "dense_bytes": dense_bytes, "fallback_perplexity": quality,
                              "rows": [{"name": n, "result": r, "where": w} for n, r, w in rows]}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
