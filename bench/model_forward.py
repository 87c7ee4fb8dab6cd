"""How fast does moeweave run an MoE checkpoint compared with transformers on the same CPU and
checkpoint, how close is its decode to the memory-bandwidth bound, and how much memory does each
hold?

The checkpoint has the layer shapes of Qwen3-30B-A3B (hidden 2048, 128 experts of 768, top-8,
GQA 32/4 heads of 128) or Mixtral-8x7B (hidden 4096, 8 experts of 14336, top-2, GQA 32/8 heads
of 128) with fewer layers and a smaller vocabulary, random weights; it is generated once into
$MOEWEAVE_CACHE_DIR (bench/common.py: bench_checkpoint). The systems: transformers (bf16) and
moeweave with bf16 experts, INT4 experts, and INT4 experts with INT8 attention / LM-head
projections (dense weights bf16 otherwise). Reported per system, in llama-bench's terms: ppN =
prefill tokens/s of an N-token prompt (logits at its last position only: llama-bench's batches
leave llama.cpp's `logits` unset, which outputs the last token's alone) and tgM = greedy decode
tokens/s over the M tokens after it, each the mean ± sd over --reps; the bytes a decode token
reads and the decode rate as a fraction of the bound they set at the STREAM triad bandwidth; the
peak and steady resident memory of loading it (each load in a fresh process, as
bench/load_memory.py measures); and where moeweave's decode time goes per stage. Each rep is a
round that visits every system in turn with its own triad: ratios are medians of the
within-round ratios.

    python bench/model_forward.py [--preset qwen3-30b-a3b|mixtral-8x7b] [--layers 2] [--pp 512]
        [--tg 128] [--reps 3]
"""

import argparse
import statistics
import time

import torch
import transformers
from common import Report, Row, bench_checkpoint, stream_triad_gbps
from load_memory import LOADERS, measure

from moeweave.models import KVCache, load
from moeweave.models import layers as layers_module
from moeweave.models import model as model_module
from moeweave.models.moe_block import MoEBlock
from moeweave.quant import ExpertTable


class Decoder:
    """One sequence's greedy decode state (its KV cache and next token) after a timed prefill."""

    def __init__(self, forward, prompt):
        """forward(ids [1, S], cache) -> (last logits [V], cache); cache None on the first call.
        Both systems compute the LM head at the last position only, as generation and llama-bench
        do."""
        self.forward = forward
        start = time.perf_counter()
        logits, self.cache = forward(prompt, None)
        self.prefill_seconds = time.perf_counter() - start
        self.token = logits.argmax(-1).view(1, 1)

    def seconds_per_token(self, tokens: int) -> float:
        start = time.perf_counter()
        for _ in range(tokens):
            logits, self.cache = self.forward(self.token, self.cache)
            self.token = logits.argmax(-1).view(1, 1)
        return (time.perf_counter() - start) / tokens


def transformers_forward(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()

    @torch.no_grad()
    def forward(ids, cache):
        out = model(ids, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.cache

    return forward


def moeweave_forward(model):
    def forward(ids, cache):
        cache = KVCache() if cache is None else cache
        return model(ids, cache=cache, logits_to_keep=1).logits[0, -1], cache

    return forward


STAGES = ("dense projections", "attention", "routing", "routed experts", "rest")


class StageTimer:
    """Wall time per decode stage, by wrapping the functions the model calls for each: dense
    projections (attention q/k/v/o and the LM head), attention over the cache, routing (router
    matmul and top-k), routed experts. The rest is norms, RoPE, residuals, cache appends, Python."""

    def __init__(self, model):
        self.seconds: dict[str, float] = {}
        self.patches = [
            (module, "linear", "dense projections") for module in (layers_module, model_module)
        ] + [(layers_module, "scaled_attention", "attention"), (MoEBlock, "route", "routing")]
        for owner, name, stage in self.patches:
            setattr(owner, name, self.timed(stage, getattr(owner, name)))
        self.model, self.provider = model, model.layers[0].mlp.experts
        for layer in model.layers:
            layer.mlp.experts = self.timed("routed experts", self.provider)

    def timed(self, stage, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
            return result

        call.inner = fn
        return call

    def restore(self):
        for owner, name, _ in self.patches:
            setattr(owner, name, getattr(owner, name).inner)
        for layer in self.model.layers:
            layer.mlp.experts = self.provider


def stage_breakdown(model, decoder: Decoder, tokens: int) -> dict[str, float]:
    """Seconds per token in each stage, from a decode run with the stage timers in place (they
    add a little time of their own)."""
    timer = StageTimer(model)
    total = decoder.seconds_per_token(tokens)
    timer.restore()
    stages = {stage: timer.seconds.get(stage, 0.0) / tokens for stage in STAGES[:-1]}
    stages["rest"] = total - sum(stages.values())
    return stages


def bytes_per_decode_token(model, tables: dict[int, ExpertTable]) -> float:
    """Weights a decode step reads: every dense weight once (embedding: one row) plus top-k
    experts per MoE layer at their stored size (the KV cache is small at these lengths)."""
    experts = sum(model.spec.top_k * table.nbytes / len(table) for table in tables.values())
    return model.dense_bytes_per_token() + experts


VARIANTS = (("bf16", "float"), ("int4", "float"), ("int4", "int8"))  # (experts, projections)
BASELINE = "transformers bf16"
# What bench/load_memory.py's child process evaluates to load a moeweave variant (it binds `path`).
MOEWEAVE_LOADER = "moeweave.models.load(path, experts={!r}, dtype=torch.bfloat16, projections={!r})"


def variant_name(experts: str, projections: str) -> str:
    return f"moeweave {experts} experts, {projections} projections"


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def within_rounds(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of each round's ratio."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("qwen3-30b-a3b", "mixtral-8x7b"), default="qwen3-30b-a3b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--pp", type=int, default=512, help="prompt tokens")
    parser.add_argument("--tg", type=int, default=128, help="tokens generated after the prompt")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    path = bench_checkpoint(args.layers, args.vocab, args.preset)
    prompt = torch.randint(0, args.vocab, (1, args.pp), generator=torch.Generator().manual_seed(0))
    config = f"{args.preset} shapes {args.layers}L, pp{args.pp} tg{args.tg}"

    # Memory first, one fresh process per load, while this process holds no model.
    loaders = {BASELINE: LOADERS[BASELINE]} | {variant_name(*v): MOEWEAVE_LOADER.format(*v) for v in VARIANTS}
    memory = {name: measure(loader, path) for name, loader in loaders.items()}

    models = {
        variant_name(e, p): load(path, experts=e, dtype=torch.bfloat16, projections=p) for e, p in VARIANTS
    }
    forwards = {BASELINE: transformers_forward(path)} | {n: moeweave_forward(m) for n, m in models.items()}
    reads = {n: bytes_per_decode_token(m, m.layers[0].mlp.experts.tables) for n, m in models.items()}
    reads[BASELINE] = reads[variant_name(*VARIANTS[0])]  # the same bf16 weights
    for forward in forwards.values():  # warm-up: first-call allocations, kernel selection
        Decoder(forward, prompt).seconds_per_token(2)
    # Rounds visit every system in turn, each with its own triad: this VM's speed moves by up to
    # 2x within minutes, so ratios are taken within a round.
    triads, prefill, decode = [], {n: [] for n in forwards}, {n: [] for n in forwards}
    for _ in range(args.reps):
        triads.append(stream_triad_gbps())
        for name, forward in forwards.items():
            decoder = Decoder(forward, prompt)
            prefill[name].append(decoder.prefill_seconds)
            decode[name].append(decoder.seconds_per_token(args.tg))

    report = Report(__file__, {"stream_triad_GBps (median of rounds)": statistics.median(triads)})
    cpu = report.machine
    print(f"# {cpu['cpu']}, {cpu['cpus']} CPUs, ISA {cpu['isa']}; {config}; {path.name}")
    print(f"# triad per round (GB/s): {' '.join(f'{t:.1f}' for t in triads)}\n")
    pp, tg = f"pp{args.pp}", f"tg{args.tg}"
    columns = [f"{pp} tok/s", f"{tg} tok/s", f"{pp} vs transformers", f"{tg} vs transformers"]
    columns += ["MB read / token", f"{tg} / bound", "load peak MiB", "steady MiB"]
    print(f"| system | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for name in forwards:
        pp_rates, tg_rates = [args.pp / s for s in prefill[name]], [1 / s for s in decode[name]]
        pp_ratio = within_rounds(prefill[BASELINE], prefill[name])
        tg_ratio = within_rounds(decode[BASELINE], decode[name])
        to_bound = within_rounds([reads[name] * rate / 1e9 for rate in tg_rates], triads)  # GB/s / GB/s
        peak, steady, _ = memory[name]
        cells = [mean_sd(pp_rates), mean_sd(tg_rates), f"{pp_ratio:.2f}x", f"{tg_ratio:.2f}x"]
        cells += [f"{reads[name] / 1e6:.0f}", f"{to_bound:.2f}", str(peak >> 20), str(steady >> 20)]
        print(f"| {name} | {' | '.join(cells)} |", flush=True)
        # The markdown table above stands in for Report.add's printout; the rows go to the JSON lines.
        report.rows += [
            Row(f"{name} {pp}", config, statistics.mean(pp_rates), "tok/s", BASELINE, pp_ratio, None),
            Row(f"{name} {tg}", config, statistics.mean(tg_rates), "tok/s", BASELINE, tg_ratio, to_bound),
            Row(f"{name} load peak", config, peak / 2**20, "MiB", BASELINE, memory[BASELINE][0] / peak, None),
        ]

    print(f"\nWhere a decode step goes (ms per token over {tg} after the prompt, with stage timers):\n")
    print(f"| system | {' | '.join(STAGES)} |\n|---|{'---|' * len(STAGES)}")
    for name, model in models.items():
        stages = stage_breakdown(model, Decoder(forwards[name], prompt), args.tg)
        print(f"| {name} | {' | '.join(f'{stages[s] * 1e3:.2f}' for s in STAGES)} |", flush=True)
    report.finish()


if __name__ == "__main__":
    main()
