"""A short fine-tune of the bundled model with Bone (moeweave.train.bone, bat and default modes)
against LoRA (PEFT) at equal trainable parameters.

Targets: every layer's attention q_proj and o_proj (256 x 256): Bone with r = 16 trains
out x r = 4096 numbers per matrix in either mode, LoRA with rank 8 (in + out) x 8 = 4096. Data:
the system's C headers, a domain the bundled model never saw (bench/esft_domains.py's windows and
held-out split), --steps batches of 8 x 256 tokens, the same batches in the same order for every
run, AdamW at --lr-bone / --lr-lora (defaults: each method's best held-out loss after 40 steps
among 1e-3 (Bone only), 3e-3, 1e-2 and 3e-2, which was 1e-2 for all three). Reported: trainable
parameters, the mean training loss of the last 20 steps, held-out loss on C headers and on the
model's own "docs" domain; the training loss of every step plotted to --plot.

    python bench/bone_finetune.py [--steps 150] [--plot docs/bone_finetune.png]
"""

import argparse
import statistics

import peft
import torch
import transformers
from common import Report, Row
from esft_domains import DOMAINS, base_model, batches, heldout_loss, windows
from matplotlib.figure import Figure

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.recipes.demo_model.corpus import split
from moeweave.train import bone

TARGETS = ["q_proj", "o_proj"]


def train(model, data, lr: float) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for ids in data:
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr-bone", type=float, default=1e-2)
    parser.add_argument("--lr-lora", type=float, default=1e-2)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--plot", default="docs/bone_finetune.png")
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    splits = {name: split(DOMAINS[name]()) for name in ("c-headers", "docs")}
    data = batches(windows(splits["c-headers"][0], tokenizer, 256), 8, args.steps, seed=0)
    evals = {
        name: windows(heldout, tokenizer, 256)[: args.eval_windows] for name, (_, heldout) in splits.items()
    }
    base_losses = {name: heldout_loss(base_model(), rows) for name, rows in evals.items()}

    runs = {}
    for mode in ("bat", "default"):
        model = base_model()
        bone.apply(model, r=16, mode=mode, target_modules=TARGETS)
        runs[f"Bone {mode}, r = 16"] = (model, args.lr_bone)
    lora = peft.get_peft_model(base_model(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    runs["LoRA r = 8 (PEFT)"] = (lora, args.lr_lora)

    report = Report(__file__, {})
    results = {}
    for name, (model, lr) in runs.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        curve = train(model, data, lr)
        results[name] = (trainable, lr, curve, {n: heldout_loss(model, rows) for n, rows in evals.items()})
        print(f"{name}: {results[name][3]}", flush=True)

    cpu = report.machine
    print(f"\n# {cpu['cpu']}, {cpu['cpus']} CPUs; {args.steps} steps of 8x256 tokens of C headers\n")
    print("| run | trainable params | lr | train loss (last 20 steps) | c-headers held-out | docs held-out |")
    print("|---|---|---|---|---|---|")
    print(f"| base | 0 | - | - | {base_losses['c-headers']:.3f} | {base_losses['docs']:.3f} |")
    for name, (trainable, lr, curve, losses) in results.items():
        cells = [f"{losses[n]:.3f} ({losses[n] - base_losses[n]:+.3f})" for n in evals]
        print(
            f"| {name} | {trainable:,} | {lr:g} | {statistics.mean(curve[-20:]):.3f} | {' | '.join(cells)} |"
        )
        report.rows.append(Row(name, "c-headers held-out loss", losses["c-headers"], "nats", "base",
                               base_losses["c-headers"] / losses["c-headers"], None))  # fmt: skip
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for name, (_, _, curve, _) in results.items():
        axes.plot(range(1, len(curve) + 1), curve, label=name, linewidth=1)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (nats)")
    axes.set_title("Bundled model tuned on C headers, equal trainable parameters")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.plot, dpi=120)
    report.finish()


if __name__ == "__main__":
    main()
