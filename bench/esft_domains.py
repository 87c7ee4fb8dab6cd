"""Does ESFT (moeweave.train.esft) adapt the bundled model to a domain by tuning a few experts, as
well as full fine-tuning and better than as many randomly chosen experts, while leaving the other
domains near the base?

The bundled model (Qwen3-MoE-shaped, 6 layers x 16 experts, top-2) was trained on four text
domains, among them the Python standard library's source ("code") and its language reference
("docs"). Tuned here: C headers of the system (/usr/include, a domain it never saw; --tune
c-headers, the default) or one of its own domains (--tune docs). Held-out: 5 % of each domain's
documents (the recipe's split, moeweave.recipes.demo_model.corpus.split). Runs, each from the base
with AdamW (--lr, --steps batches of --batch windows of --seq-len tokens, the same batches in the
same order): ESFT with token-ratio scores (p = --p-token), ESFT with gate scores (p = --p-gate), as
many randomly chosen experts per layer as ESFT-token chose, and full fine-tuning (every
parameter). Scores come from --score-windows windows of the tuned domain's training text.
Reported: trainable parameters, the share of routed experts tuned, and held-out cross-entropy per
domain (the change against the base in parentheses).

    python bench/esft_domains.py [--tune c-headers|docs] [--steps 150]
"""

import argparse
import random
import statistics
from pathlib import Path

import torch
import transformers
from common import Report, Row

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.recipes.demo_model.corpus import code_documents, docs_documents, split
from moeweave.train import esft

C_HEADERS = Path("/usr/include")
C_HEADER_CHARS = 3_000_000


def c_header_documents() -> list[str]:
    """The system's C headers, in path order, up to C_HEADER_CHARS characters."""
    docs, total = [], 0
    for path in sorted(C_HEADERS.rglob("*.h")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text and total + len(text) <= C_HEADER_CHARS:
            docs.append(text)
            total += len(text)
    return docs


DOMAINS = {"c-headers": c_header_documents, "docs": docs_documents, "code": code_documents}


def windows(docs: list[str], tokenizer, seq_len: int) -> list[torch.Tensor]:
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    return [torch.tensor(ids[i : i + seq_len]) for i in range(0, len(ids) - seq_len + 1, seq_len)]


def batches(rows: list[torch.Tensor], batch: int, count: int, seed: int) -> list[torch.Tensor]:
    rng = random.Random(seed)
    return [torch.stack(rng.sample(rows, batch)) for _ in range(count)]


def heldout_loss(model, rows: list[torch.Tensor], batch: int = 8) -> float:
    model.eval()
    with torch.no_grad():
        losses = [float(model(torch.stack(rows[i : i + batch]), labels=torch.stack(rows[i : i + batch])).loss)
                  for i in range(0, len(rows) - batch + 1, batch)]  # fmt: skip
    return statistics.mean(losses)


def base_model():
    return transformers.AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32)


def finetune(model, trainable: list[torch.nn.Parameter], data: list[torch.Tensor], lr: float) -> None:
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    model.train()
    for ids in data:
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune", choices=sorted(DOMAINS), default="c-headers")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--p-token", type=float, default=0.2)
    parser.add_argument("--p-gate", type=float, default=0.1)
    parser.add_argument("--score-windows", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    splits = {name: split(documents()) for name, documents in DOMAINS.items()}
    train_rows = windows(splits[args.tune][0], tokenizer, args.seq_len)
    evals = {
        f"{name}{' (tuned)' if name == args.tune else ''}": windows(heldout, tokenizer, args.seq_len)[
            : args.eval_windows
        ]
        for name, (_, heldout) in splits.items()
    }
    data = batches(train_rows, args.batch, args.steps, seed=0)
    sample = [torch.stack(train_rows[i : i + 8]) for i in range(0, args.score_windows, 8)]

    model = base_model()
    layers = esft.moe_layers(model)
    routed = sum(router.num_experts for router in layers.values())
    token = esft.select_experts(esft.expert_scores(model, sample, by="token"), args.p_token)
    gate = esft.select_experts(esft.expert_scores(model, sample, by="gate"), args.p_gate)
    rng = random.Random(0)
    chosen_random = {
        layer: rng.sample(range(layers[layer].num_experts), len(e)) for layer, e in token.items()
    }
    results = {"base": (0, 0.0, {name: heldout_loss(model, rows) for name, rows in evals.items()})}
    runs = {
        f"ESFT, token scores, p = {args.p_token}": token,
        f"ESFT, gate scores, p = {args.p_gate}": gate,
        "random experts (as many as ESFT-token)": chosen_random,
        "full fine-tuning": None,
    }
    for run, selection in runs.items():
        model = base_model()
        if selection is None:
            trainable, share = list(model.parameters()), 1.0
        else:
            trainable = esft.freeze_except(model, selection)
            share = sum(map(len, selection.values())) / routed
        finetune(model, trainable, data, args.lr)
        results[run] = (
            sum(p.numel() for p in trainable),
            share,
            {n: heldout_loss(model, r) for n, r in evals.items()},
        )
        print(f"{run}: {results[run]}", flush=True)

    report = Report(__file__, {})
    cpu = report.machine
    setup = f"tuned on {args.tune}, {args.steps} steps of {args.batch}x{args.seq_len} tokens, lr {args.lr}"
    print(f"\n# {cpu['cpu']}, {cpu['cpus']} CPUs; {setup}\n")
    names = list(evals)
    print(f"| run | trainable params | routed experts tuned | {' | '.join(names)} |")
    print(f"|---|---|---|{'---|' * len(names)}")
    base = results["base"][2]
    for run, (params, share, losses) in results.items():
        cells = [
            f"{losses[n]:.3f}" + ("" if run == "base" else f" ({losses[n] - base[n]:+.3f})") for n in names
        ]
        print(f"| {run} | {params:,} | {share:.1%} | {' | '.join(cells)} |")
        report.rows.append(
            Row(
                run,
                "docs held-out loss",
                losses[names[0]],
                "nats",
                "base",
                base[names[0]] / losses[names[0]],
                None,
            )
        )
    report.finish()


if __name__ == "__main__":
    main()
