"""Does a WAGLE mask (moeweave.train.wagle) let unlearning remove a sub-corpus from the bundled
model at less cost to the rest than a random or a magnitude mask that updates as many weights?

The bundled model (Qwen3-MoE-shaped, 17.5 M parameters) was trained on four text domains
(moeweave.recipes.demo_model.corpus). Forgotten here: --forget-windows windows of one of them
(--forget, default "docs", the Python language reference), a sub-corpus the model really learned;
retained: the other three. A domain rather than injected facts because the model already knows it
(no fine-tune that would itself move the model before the comparison starts), because the recipe's
held-out split says whether forgetting reaches the domain or only the windows seen, and because
"docs" sits next to a retained domain ("code", the standard library's source), so forgetting has a
real cost to keep low.

Masks, each keeping --ratio of all weights (the top by |score|, moeweave.train.wagle.top_ratio_mask):
WAGLE (γ = --gamma), random, magnitude; and no mask. Scores read the forget windows and
--score-batches retain batches. Every run starts from the base and takes --steps AdamW steps
(weight decay --weight-decay kept off masked-out weights, clip 1.0) of an unlearning loss
(GradDiff; NPO with β = 0.1; retain weight --retain-weight) on the same batches in the same order:
--batch forget windows (cycled) and --batch retain windows of --seq-len tokens. Each mask runs at
every learning rate of --lrs: masks of one size do not forget equally fast at one learning rate (a
random mask barely moves the forget loss where WAGLE's moves it by a nat), so the masks are
compared at matched forgetting, reading the table across learning rates.
Reported: held-out cross-entropy of the forget domain and of each retained domain, and the loss on
the forget windows themselves (higher is more forgotten; retained lower is better), with the
change against the base.

    python bench/wagle_unlearn.py [--forget docs] [--ratio 0.1] [--steps 10] [--lrs 3e-4 1e-3 3e-3]
"""

import argparse
import random
import statistics
import time

import torch
import transformers
from common import Report, Row

from moeweave import envs
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.recipes.demo_model.corpus import build_corpus
from moeweave.train import wagle

DOMAINS = ("wiki", "news", "code", "docs")
LOSSES = ("graddiff", "npo")


def windows(docs: list[str], tokenizer, seq_len: int) -> list[torch.Tensor]:
    """Consecutive seq_len-token windows [seq_len] of the documents joined with EOS."""
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    return [torch.tensor(ids[i : i + seq_len]) for i in range(0, len(ids) - seq_len + 1, seq_len)]


def stacked(rows: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """The rows in consecutive batches [batch, seq_len] (a short last batch dropped)."""
    return [torch.stack(rows[i : i + batch]) for i in range(0, len(rows) - batch + 1, batch)]


def mean_loss(model, batches: list[torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return statistics.mean(float(model(ids, labels=ids).loss) for ids in batches)


def base_model():
    return transformers.AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32)


def unlearn(model, loss: str, mask, lr: float, forget: list, retain: list, args) -> None:
    """args.steps AdamW steps of `loss`, updating only the weights `mask` keeps (all when None)."""
    reference = base_model().requires_grad_(False).eval() if loss == "npo" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    if mask is not None:
        wagle.mask_updates(optimizer, model, mask)
    model.train()
    for step in range(args.steps):
        f, r = forget[step % len(forget)], retain[step]
        if loss == "npo":
            value = wagle.npo_loss(model, reference, f, r, retain_weight=args.retain_weight)
        else:
            value = wagle.graddiff_loss(model, f, r, retain_weight=args.retain_weight)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forget", choices=DOMAINS, default="docs")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--retain-weight", type=float, default=1.0)
    parser.add_argument("--forget-windows", type=int, default=32)
    parser.add_argument("--score-batches", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    args = parser.parse_args()
    started = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    corpus = build_corpus(envs.cache_dir() / "wheels")
    rng = random.Random(0)
    forget_rows = windows(corpus[args.forget].train, tokenizer, args.seq_len)
    forget = stacked(rng.sample(forget_rows, args.forget_windows), args.batch)
    retained = [name for name in DOMAINS if name != args.forget]
    retain_rows = [row for name in retained for row in windows(corpus[name].train, tokenizer, args.seq_len)]
    retain = stacked(rng.sample(retain_rows, (args.steps + args.score_batches) * args.batch), args.batch)
    retain_train, retain_score = retain[: args.steps], retain[args.steps :]
    evals = {"forget windows": forget}
    for name in [args.forget, *retained]:
        evals[f"{name} held-out"] = stacked(
            windows(corpus[name].heldout, tokenizer, args.seq_len)[: args.eval_windows], 8
        )

    model = base_model()
    total = sum(p.numel() for p in model.parameters())
    masks = {"none": None}
    for method in ("wagle", "random", "magnitude"):
        scores = wagle.attribution_scores(model, forget, retain_score, method=method, gamma=args.gamma)
        masks[method] = wagle.top_ratio_mask(scores, args.ratio)
    results = {("base", "-", None): (0, {name: mean_loss(model, batches) for name, batches in evals.items()})}
    for loss in args.losses:
        for name, mask in masks.items():
            for lr in args.lrs:
                model = base_model()
                unlearn(model, loss, mask, lr, forget, retain_train, args)
                updated = total if mask is None else sum(int(m.sum()) for m in mask.values())
                results[(loss, name, lr)] = (updated, {n: mean_loss(model, b) for n, b in evals.items()})
                print(f"{loss}, mask {name}, lr {lr}: {results[(loss, name, lr)]}", flush=True)

    report = Report(__file__, {})
    cpu = report.machine
    setup = (
        f"forget {args.forget} ({args.forget_windows} windows), mask ratio {args.ratio}, {args.steps} steps of "
        f"{args.batch}+{args.batch} windows of {args.seq_len} tokens, weight decay {args.weight_decay}, "
        f"retain weight {args.retain_weight}"
    )
    print(f"\n# {cpu['cpu']}, {cpu['cpus']} CPUs, {cpu['torch_threads']} torch threads; {setup}; "
          f"{time.perf_counter() - started:.0f} s\n")  # fmt: skip
    names = list(evals)
    retained_names = [f"{name} held-out" for name in retained]
    forget_name = f"{args.forget} held-out"
    print(f"| loss | mask | weights updated | lr | {' | '.join(names)} | retained mean |")
    print(f"|---|---|---|---|{'---|' * (len(names) + 1)}")
    base = results[("base", "-", None)][1]
    base_retained = statistics.mean(base[n] for n in retained_names)
    for (loss, name, lr), (updated, losses) in results.items():
        retained_mean = statistics.mean(losses[n] for n in retained_names)
        cells = [f"{losses[n]:.3f}" for n in names] + [f"{retained_mean:.3f}"]
        if loss != "base":
            deltas = [losses[n] - base[n] for n in names] + [retained_mean - base_retained]
            cells = [f"{cell} ({delta:+.3f})" for cell, delta in zip(cells, deltas, strict=True)]
        print(f"| {loss} | {name} | {updated / total:.1%} | {lr or '-'} | {' | '.join(cells)} |")
        config = f"{setup}, lr {lr}"
        for what, value, before in (
            (forget_name, losses[forget_name], base[forget_name]),
            ("retained mean held-out", retained_mean, base_retained),
        ):
            report.rows.append(
                Row(f"{loss}, mask {name}: {what}", config, value, "nats", "base", value / before, None)
            )
    report.finish()


if __name__ == "__main__":
    main()
