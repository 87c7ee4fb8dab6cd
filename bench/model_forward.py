"""How fast does moeweave run an MoE checkpoint compared with transformers on the same CPU and
checkpoint, and how close is decode to the memory-bandwidth bound?

The checkpoint has Qwen3-30B-A3B's layer shapes (hidden 2048, 128 experts of 768, top-8, GQA
32/4 heads of 128) with fewer layers and a smaller vocabulary, random weights, >= 2 GB in bf16;
it is generated once into $MOEWEAVE_CACHE_DIR by the demo-model recipe's random-checkpoint writer. Reported, in one run: prefill and decode
tokens/s of transformers (bf16) and of moeweave with bf16 and INT4 experts (dense weights bf16,
and INT4 experts with INT8 attention / LM-head projections),
the decode bound = bytes touched per token / STREAM triad bandwidth, and where decode time goes
per stage (dense projections, attention, routing, routed experts, the rest). Decoding runs in
rounds that visit every model in turn, each with its own triad; ratios are medians of the
within-round ratios.

    python bench/model_forward.py [--layers 2] [--prompt 128] [--rounds 5] [--tokens-per-round 8]
"""

import argparse
import statistics
import time

import torch
import transformers
from common import Report, Row, bench_checkpoint, stream_triad_gbps

from moeweave.models import KVCache, load
from moeweave.models import layers as layers_module
from moeweave.models import model as model_module
from moeweave.models.moe_block import MoEBlock
from moeweave.quant import ExpertTable


class Decoder:
    """One model's greedy decode state (its KV cache and next token) after a timed prefill."""

    def __init__(self, forward, prompt):
        """forward(ids [1, S], cache) -> (last logits [V], cache); cache None on the first call."""
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


def transformers_decoder(path, prompt) -> Decoder:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()

    @torch.no_grad()
    def forward(ids, cache):
        out = model(ids, cache=cache, use_cache=True)
        return out.logits[0, -1], out.past_key_values

    return Decoder(forward, prompt)


def moeweave_decoder(model, prompt) -> Decoder:
    def forward(ids, cache):
        cache = KVCache() if cache is None else cache
        return model(ids, cache=cache).logits[0, -1], cache

    return Decoder(forward, prompt)


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
        provider = model.layers[0].mlp.experts
        for layer in model.layers:
            layer.mlp.experts = self.timed("routed experts", provider)

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


def stage_breakdown(model, decoder: Decoder, tokens: int) -> dict[str, float]:
    """Seconds per token in each stage, from a decode run with the stage timers in place (they
    add a little time of their own)."""
    timer = StageTimer(model)
    total = decoder.seconds_per_token(tokens)
    timer.restore()
    stages = {stage: seconds / tokens for stage, seconds in timer.seconds.items()}
    stages["rest"] = total - sum(stages.values())
    return stages


def bytes_per_decode_token(model, tables: dict[int, ExpertTable]) -> float:
    """Weights a decode step reads: every dense weight once (embedding: one row) plus top-k
    experts per MoE layer at their stored size (the KV cache is small at these lengths)."""
    experts = sum(model.spec.top_k * table.nbytes / len(table) for table in tables.values())
    return model.dense_bytes_per_token() + experts


VARIANTS = (("bf16", "float"), ("int4", "float"), ("int4", "int8"))  # (experts, projections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens-per-round", type=int, default=8)
    args = parser.parse_args()
    path = bench_checkpoint(args.layers, args.vocab)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    config = f"qwen3-30b-a3b shapes {args.layers}L, prompt {args.prompt}"
    baseline = transformers_decoder(path, prompt)
    models = {
        variant: load(path, experts=variant[0], dtype=torch.bfloat16, projections=variant[1])
        for variant in VARIANTS
    }
    decoders = {variant: moeweave_decoder(model, prompt) for variant, model in models.items()}
    # Decode in rounds that visit every model in turn, with a triad per round: this VM's speed
    # moves by up to 2x within minutes, and each ratio is taken within a round, then the median.
    triads, times = [], {name: [] for name in ["transformers", *VARIANTS]}
    for _ in range(args.rounds):
        triads.append(stream_triad_gbps())
        times["transformers"].append(baseline.seconds_per_token(args.tokens_per_round))
        for variant, decoder in decoders.items():
            times[variant].append(decoder.seconds_per_token(args.tokens_per_round))
    triad = statistics.median(triads)
    report = Report(__file__, {"stream_triad_GBps (median of rounds)": triad})
    report.header()
    print(f"# triad per round (GB/s): {' '.join(f'{t:.1f}' for t in triads)}")
    base_decode = statistics.median(times["transformers"])
    report.add(
        Row(
            "transformers bf16 prefill",
            config,
            args.prompt / baseline.prefill_seconds,
            "tok/s",
            "itself",
            1.0,
            None,
        )
    )
    report.add(Row("transformers bf16 decode", config, 1 / base_decode, "tok/s", "itself", 1.0, None))  # fmt: skip
    for variant, decoder in decoders.items():
        experts, projections = variant
        model = models[variant]
        decode = statistics.median(times[variant])
        speedup = statistics.median(b / t for b, t in zip(times["transformers"], times[variant], strict=True))
        bytes_per_token = bytes_per_decode_token(model, model.layers[0].mlp.experts.tables)
        to_bound = statistics.median(
            t * triad_gbps * 1e9 / bytes_per_token
            for t, triad_gbps in zip(times[variant], triads, strict=True)
        )
        name = f"moeweave {experts}/{projections}"
        report.add(Row(f"{name} prefill", config, args.prompt / decoder.prefill_seconds, "tok/s", "transformers bf16",
                       baseline.prefill_seconds / decoder.prefill_seconds, None))  # fmt: skip
        report.add(
            Row(f"{name} decode", config, 1 / decode, "tok/s", "transformers bf16", speedup, 1 / to_bound)
        )
        stages = stage_breakdown(model, decoder, args.tokens_per_round)
        breakdown = ", ".join(f"{stage} {seconds * 1e3:.2f}" for stage, seconds in stages.items())
        print(f"#   {experts} experts, {projections} projections: decode {decode * 1e3:.2f} ms/token, "
              f"{to_bound:.2f}x the bound (median of rounds); per stage (ms): {breakdown}")  # fmt: skip
    report.finish()


if __name__ == "__main__":
    main()
