"""`python -m moeweave.recipes.demo_model`: build the bundled demo MoE model, or a random benchmark checkpoint.

Default mode runs the whole recipe: corpus -> tokenizer -> training -> bf16 Hugging Face
checkpoint -> reload from disk -> eval.json, into `demo_model` under the cache directory unless
--out says otherwise (the bundled copy is refreshed with --out python/moeweave/data/demo_model;
an installed package's own folder is never written by default). `--random-shapes` instead writes a random-weight checkpoint with real expert
shapes into the cache directory. docs/demo_model.md records the results and exact commands.
"""

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3MoeForCausalLM

import moeweave.cpu
from moeweave.envs import cache_dir
from moeweave.recipes.demo_model import corpus as corpus_mod
from moeweave.recipes.demo_model import random_checkpoint
from moeweave.recipes.demo_model.evaluate import evaluate, heldout_losses
from moeweave.recipes.demo_model.tokenizer import encode_documents, train_tokenizer
from moeweave.recipes.demo_model.train import (
    ModelShape,
    TrainSettings,
    count_parameters,
    domain_batches,
    model_config,
    settings_record,
    train,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shape, settings = ModelShape(), TrainSettings()
    p = argparse.ArgumentParser(
        prog="python -m moeweave.recipes.demo_model", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--out",
        type=Path,
        help=f"output directory (default: {cache_dir() / 'demo_model'}; "
        "with --random-shapes: a directory under the cache)",
    )
    p.add_argument(
        "--minutes", type=float, default=45.0, help="training wall-time budget (the LR schedule follows it)"
    )
    p.add_argument(
        "--steps",
        type=int,
        help="train exactly this many steps instead of --minutes (repeats a recorded run)",
    )
    p.add_argument("--layers", type=int, default=shape.layers)
    p.add_argument("--hidden", type=int, default=shape.hidden)
    p.add_argument("--heads", type=int, default=shape.heads)
    p.add_argument("--kv-heads", type=int, default=shape.kv_heads)
    p.add_argument("--head-dim", type=int, default=shape.head_dim)
    p.add_argument("--experts", type=int, default=shape.experts)
    p.add_argument("--top-k", type=int, default=shape.top_k)
    p.add_argument("--expert-hidden", type=int, default=shape.expert_hidden)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=settings.seq_len)
    p.add_argument("--batch-size", type=int, default=settings.batch_size)
    p.add_argument("--lr", type=float, default=settings.lr)
    p.add_argument("--seed", type=int, default=settings.seed)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--random-shapes",
        choices=sorted(random_checkpoint.PRESETS),
        help="write a random-weight checkpoint with these real expert shapes instead of training",
    )
    p.add_argument("--num-layers", type=int, default=4, help="layers of the --random-shapes checkpoint")
    return p.parse_args(argv)


def _cpu_name() -> str:
    return moeweave.cpu.cpuinfo_field("model name") or platform.processor() or platform.machine()


def _write_curve(path: Path, curve: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in curve for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(curve)


def _print_summary(ev: dict) -> None:
    print(f"{'domain':<6} {'ppl/token':>10} {'unigram':>10} {'ppl/byte':>9} {'unigram':>8} {'snippet':>8}")
    for name, d in ev["domains"].items():
        print(
            f"{name:<6} {d['ppl_token']:>10.2f} {d['unigram_ppl_token']:>10.2f} {d['ppl_byte']:>9.3f} "
            f"{d['unigram_ppl_byte']:>8.3f} {d['snippet_ppl_token']:>8.2f}"
        )
    r = ev["routing"]
    print(f"routing entropy per layer (uniform {r['uniform_entropy']:.3f}):")
    for name, d in r["domains"].items():
        print(f"  {name:<6} " + " ".join(f"{h:.3f}" for h in d["entropy_per_layer"]))
    print(
        "  JS divergence between domains per layer: "
        + " ".join(f"{x:.3f}" for x in r["js_divergence_per_layer"])
    )


def build_demo_model(args: argparse.Namespace) -> None:
    out = (args.out or cache_dir() / "demo_model").resolve()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    corpus = corpus_mod.build_corpus(cache_dir() / "wheels")
    manifest = corpus_mod.manifest(corpus)
    for name, d in manifest["domains"].items():
        print(
            f"corpus {name}: {d['train_docs']} train docs ({d['train_chars']:,} chars), "
            f"{d['heldout_docs']} held out ({d['heldout_chars']:,} chars)"
        )

    shape = ModelShape(
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        experts=args.experts,
        top_k=args.top_k,
        expert_hidden=args.expert_hidden,
        max_positions=max(1024, args.seq_len),
    )
    tokenizer = train_tokenizer((doc for d in corpus.values() for doc in d.train), args.vocab)
    tokenizer.model_max_length = shape.max_positions
    train_ids = {name: encode_documents(tokenizer, d.train) for name, d in corpus.items()}
    heldout_ids = {name: encode_documents(tokenizer, d.heldout) for name, d in corpus.items()}
    for name in corpus:
        manifest["domains"][name]["train_tokens"] = len(train_ids[name])
        manifest["domains"][name]["heldout_tokens"] = len(heldout_ids[name])

    settings = TrainSettings(
        steps=args.steps,
        minutes=None if args.steps else args.minutes,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
    )
    model = Qwen3MoeForCausalLM(model_config(shape, tokenizer, settings.router_aux_loss_coef))
    params = count_parameters(model)
    print(
        f"model: {params['total'] / 1e6:.2f} M parameters ({params['active_per_token'] / 1e6:.2f} M active per token)"
    )

    t_train = time.perf_counter()
    batches = domain_batches(train_ids, settings.batch_size, settings.seq_len, settings.seed)
    curve = train(model, batches, settings, lambda m: heldout_losses(m, heldout_ids, settings.seq_len))
    train_minutes = (time.perf_counter() - t_train) / 60

    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_curve(out / "loss_curve.csv", curve)

    # Evaluate what was written, not the in-memory model: the numbers then describe the artifact.
    loaded = AutoModelForCausalLM.from_pretrained(out)
    loaded_tokenizer = AutoTokenizer.from_pretrained(out)
    ev, snippets = evaluate(
        loaded, loaded_tokenizer, train_ids, {n: d.heldout for n, d in corpus.items()}, settings.seq_len
    )
    report = {
        "model": {
            "architecture": type(loaded).__name__,
            "parameters": params,
            "checkpoint_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
            **settings_record(shape, settings),
        },
        "training": {
            "steps": curve[-1]["step"],
            "tokens_seen": curve[-1]["tokens"],
            "train_minutes": round(train_minutes, 2),
            "total_minutes": round((time.perf_counter() - t_start) / 60, 2),
            "final_train_loss": curve[-1]["train_loss"],
            "command": "python -m moeweave.recipes.demo_model " + " ".join(sys.argv[1:]),
            "hardware": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": args.threads},
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        },
        "corpus": manifest,
        **ev,
    }
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    (out / "heldout_snippets.json").write_text(json.dumps(snippets, indent=1, ensure_ascii=False))
    _print_summary(ev)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.random_shapes:
        cfg = random_checkpoint.preset_config(args.random_shapes, args.num_layers)
        out = args.out or random_checkpoint.default_output_dir(args.random_shapes, args.num_layers)
        print(f"wrote {random_checkpoint.write_random_checkpoint(cfg, out, seed=args.seed)}")
    else:
        build_demo_model(args)


if __name__ == "__main__":
    main()
