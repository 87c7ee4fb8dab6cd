"""How fast does moeweave run an MoE checkpoint compared with transformers on the same CPU and
checkpoint, and how close is decode to the memory-bandwidth bound?

The checkpoint has Qwen3-30B-A3B's layer shapes (hidden 2048, 128 experts of 768, top-8, GQA
32/4 heads of 128) with fewer layers and a smaller vocabulary, random weights, >= 2 GB in bf16;
it is generated once into $MOEWEAVE_CACHE_DIR by the demo-model recipe's random-checkpoint writer. Reported, in one run: prefill and decode
tokens/s of transformers (bf16) and of moeweave with bf16 and INT4 experts (dense weights bf16,
and INT4 experts with INT8 attention / LM-head projections),
the decode bound = bytes touched per token / STREAM triad bandwidth, and where decode time goes
per stage (dense projections, attention, routing, routed experts, the rest).

    python bench/model_forward.py [--layers 2] [--prompt 128] [--new-tokens 32]
"""

import argparse
import time

import torch
import transformers
from common import Report, Row, stream_triad_gbps

from moeweave import envs
from moeweave.models import KVCache, load
from moeweave.models import layers as layers_module
from moeweave.models import model as model_module
from moeweave.models.moe_block import MoEBlock
from moeweave.quant import ExpertTable, QuantizedWeight
from moeweave.recipes.demo_model.random_checkpoint import preset_config, write_random_checkpoint


def checkpoint(layers: int, vocab: int):
    """The recipe's Qwen3-30B-A3B preset with fewer layers and a smaller vocabulary, written once."""
    path = envs.cache_dir() / f"bench-qwen3-30b-a3b-shapes-{layers}l-{vocab}v"
    if not (path / "config.json").exists():
        config = preset_config(
            "qwen3-30b-a3b", layers, vocab_size=vocab, bos_token_id=None, eos_token_id=None
        )
        write_random_checkpoint(config, path)
    return path


def time_decode(step, first_logits, new_tokens: int) -> float:
    """Seconds per decoded token: feed the argmax back `new_tokens` times."""
    token = first_logits.argmax(-1).view(1, 1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = step(token).argmax(-1).view(1, 1)
    return (time.perf_counter() - start) / new_tokens


def bench_transformers(path, prompt, new_tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        start = time.perf_counter()
        out = model(prompt, use_cache=True)
        prefill = time.perf_counter() - start
        cache = out.past_key_values

        def step(token):
            result = model(token, cache=cache, use_cache=True)
            return result.logits[0, -1]

        decode = time_decode(step, out.logits[0, -1], new_tokens)
    return prefill, decode


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


def bench_moeweave(path, experts, projections, prompt, new_tokens):
    model = load(path, experts=experts, dtype=torch.bfloat16, projections=projections)
    provider = model.layers[0].mlp.experts
    cache = KVCache()
    start = time.perf_counter()
    logits = model(prompt, cache=cache).logits[0, -1]
    prefill = time.perf_counter() - start
    decode = time_decode(lambda token: model(token, cache=cache).logits[0, -1], logits, new_tokens)
    # A second decode run with the stage timers in place: they add a little time of their own.
    timer = StageTimer(model)
    timed_decode = time_decode(lambda token: model(token, cache=cache).logits[0, -1], logits, new_tokens)
    timer.restore()
    stages = {stage: seconds / new_tokens for stage, seconds in timer.seconds.items()}
    stages["rest"] = timed_decode - sum(stages.values())
    return model, provider, prefill, decode, stages


def nbytes(w) -> int:
    return w.nbytes if isinstance(w, QuantizedWeight) else w.numel() * w.element_size()


def bytes_per_decode_token(model, tables: dict[int, ExpertTable]) -> float:
    """Weights a decode step reads: every dense weight once (embedding: one row) plus top-k
    experts per MoE layer at their stored size (the KV cache is small at these lengths)."""
    spec = model.spec
    dense = nbytes(model.lm_head) + spec.hidden_size * model.embed.element_size()
    for layer in model.layers:
        dense += sum(nbytes(getattr(layer.attention, name)) for name in ("q", "k", "v", "o"))
        dense += nbytes(layer.mlp.router)
    experts = sum(spec.top_k * table.nbytes / len(table) for table in tables.values())
    return dense + experts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    path = checkpoint(args.layers, args.vocab)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    triad = stream_triad_gbps()
    report = Report(__file__, {"stream_triad_GBps": triad})
    report.header()
    base_prefill, base_decode = bench_transformers(path, prompt, args.new_tokens)
    config = f"qwen3-30b-a3b shapes {args.layers}L, prompt {args.prompt}"
    report.add(
        Row("transformers bf16 prefill", config, args.prompt / base_prefill, "tok/s", "itself", 1.0, None)
    )
    report.add(Row("transformers bf16 decode", config, 1 / base_decode, "tok/s", "itself", 1.0, None))
    for experts, projections in (("bf16", "float"), ("int4", "float"), ("int4", "int8")):
        model, provider, prefill, decode, stages = bench_moeweave(
            path, experts, projections, prompt, args.new_tokens
        )
        bound = bytes_per_decode_token(model, provider.tables) / (triad * 1e9)
        report.add(Row(f"moeweave {experts}/{projections} prefill", config, args.prompt / prefill, "tok/s", "transformers bf16",
                       base_prefill / prefill, None))  # fmt: skip
        report.add(Row(f"moeweave {experts}/{projections} decode", config, 1 / decode, "tok/s", "transformers bf16",
                       base_decode / decode, bound / decode))  # fmt: skip
        breakdown = ", ".join(f"{stage} {seconds * 1e3:.2f}" for stage, seconds in stages.items())
        print(f"#   {experts} experts, {projections} projections: decode {decode * 1e3:.2f} ms/token, bound {bound * 1e3:.2f} ms "
              f"({decode / bound:.2f}x); per stage (ms): {breakdown}")  # fmt: skip
    report.finish()


if __name__ == "__main__":
    main()
