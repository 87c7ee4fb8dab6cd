"""Does the weight compander (moeweave.train.compander) change how a small MLP generalises, at the
same seed and the same weight decay?

scikit-learn's digits (1797 8x8 images, 10 classes, shipped with scikit-learn: offline), pixels
scaled to [0, 1], split per seed into halves for training and test (stratified). An MLP
64 -> 256 -> 256 -> 10 (ReLU) is trained with AdamW (--lr, --weight-decay on every parameter,
--epochs of mini-batches of --batch) without the compander and, from the same initialisation and
batch order, with it on all three weights: "exp" (the default, bounded), "mulaw" and "exp" with
learnable a and b (their own optimizer group, without weight decay). Before training, each
compander run checks that attach left the model's outputs as they were; after, that detach keeps
them. Reported, mean ± standard deviation over --seeds: test accuracy, the train - test gap in
accuracy and in cross-entropy, and of the hidden 256x256 layer after training the largest |w|
(large weights are what the compander restrains) and the share of weights below a tenth of the
largest |w| at initialisation, m0 (small ones are what it pushes away from zero). The hidden
layer's weights before and after training (first seed) are plotted to --plot.

    python bench/compander_digits.py [--seeds 5] [--epochs 40] [--weight-decay 0.01]
        [--plot docs/compander_digits.png]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import Report, Row
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from moeweave.train import compander

# Run name -> attach's arguments (None: no compander).
RUNS = {
    "no compander": None,
    "compander exp": dict(fn="exp"),
    "compander mulaw": dict(fn="mulaw"),
    "compander exp, learnable a, b": dict(fn="exp", learnable=True),
}
HIDDEN = 2  # index of the 256x256 layer in the Sequential below


def data(seed: int) -> tuple[torch.Tensor, ...]:
    """x_train [N, 64], y_train [N], x_test [M, 64], y_test [M]."""
    digits = load_digits()
    split = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.5, stratify=digits.target, random_state=seed
    )
    x_train, x_test, y_train, y_test = (torch.tensor(a) for a in split)
    return x_train.float(), y_train.long(), x_test.float(), y_test.long()


def mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy)."""
    logits = model(x)
    return 100 * float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def train(run: str, seed: int, split: tuple[torch.Tensor, ...], args) -> dict:
    x_train, y_train, x_test, y_test = split
    torch.manual_seed(seed)
    model = mlp(args.hidden)
    before = model[HIDDEN].weight.detach().clone()
    options = RUNS[run]
    if options is not None:
        with torch.no_grad():
            reference = model(x_test)
        compander.attach(model, **options)
        with torch.no_grad():
            torch.testing.assert_close(model(x_test), reference, rtol=1e-5, atol=1e-5)
    extra = compander.hyperparameters(model)  # learnable a, b: no weight decay
    ids = {id(p) for p in extra}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": args.weight_decay},
        {"params": extra, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        for rows in torch.randperm(len(x_train), generator=order).split(args.batch):
            F.cross_entropy(model(x_train[rows]), y_train[rows]).backward()
            optimizer.step()
            optimizer.zero_grad()
    if options is not None:
        with torch.no_grad():
            reference = model(x_test)
        compander.detach(model)
        with torch.no_grad():
            torch.testing.assert_close(model(x_test), reference, rtol=0, atol=0)
    train_accuracy, train_loss = evaluate(model, x_train, y_train)
    test_accuracy, test_loss = evaluate(model, x_test, y_test)
    after = model[HIDDEN].weight.detach().clone()
    return {
        "test accuracy %": test_accuracy,
        "accuracy gap (train - test)": train_accuracy - test_accuracy,
        "loss gap (test - train)": test_loss - train_loss,
        "max |w| hidden": float(after.abs().max()),
        "% hidden |w| < m0/10": 100 * float((after.abs() < before.abs().max() / 10).float().mean()),
        "before": before,
        "after": after,
    }


def plot(results: dict[str, list[dict]], path: str, args) -> None:
    figure = Figure(figsize=(10, 6.5))
    axes = figure.subplots(2, 2, sharex=True, sharey=True).flatten()
    before = results["no compander"][0]["before"].flatten()
    edges = torch.linspace(-1, 1, 121) * max(float(r[0]["after"].abs().max()) for r in results.values())
    for ax, (run, seeds) in zip(axes, results.items(), strict=True):
        ax.hist(before.numpy(), bins=edges.numpy(), histtype="step", label="before training", color="grey")
        ax.hist(
            seeds[0]["after"].flatten().numpy(),
            bins=edges.numpy(),
            histtype="step",
            label="after",
            color="C0",
        )
        ax.set_yscale("log")
        ax.set_title(run, fontsize=10)
        ax.legend(fontsize=8)
    for ax in axes[2:]:
        ax.set_xlabel(f"weight of the hidden {args.hidden}x{args.hidden} layer")
    figure.suptitle(f"digits MLP, AdamW weight decay {args.weight_decay:g}, {args.epochs} epochs, seed 0")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--plot", default="docs/compander_digits.png")
    args = parser.parse_args()
    # Matrices of 256 are too small to split across threads: on a shared 2-core machine a second
    # thread only spins and waits (10x slower steps, measured), so every run gets one.
    torch.set_num_threads(1)

    start = time.perf_counter()
    results: dict[str, list[dict]] = {run: [] for run in RUNS}
    for seed in range(args.seeds):
        split = data(seed)
        for run in RUNS:
            results[run].append(train(run, seed, split, args))
        print(f"  seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)

    report = Report(__file__, {})
    cpu = report.machine
    print(
        f"\n# {cpu['cpu']}, {cpu['cpus']} CPUs; {args.seeds} seeds, {args.epochs} epochs, AdamW lr {args.lr:g}, "
        f"weight decay {args.weight_decay:g}; {time.perf_counter() - start:.0f} s\n"
    )
    columns = [
        "test accuracy %",
        "accuracy gap (train - test)",
        "loss gap (test - train)",
        "max |w| hidden",
        "% hidden |w| < m0/10",
    ]
    print(f"| run | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    config = f"{args.seeds} seeds, wd {args.weight_decay:g}"
    for run, seeds in results.items():
        cells = []
        for column in columns:
            values = [result[column] for result in seeds]
            mean = statistics.mean(values)
            cells.append(f"{mean:.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}")
            base = statistics.mean(result[column] for result in results["no compander"])
            report.rows.append(Row(run, f"{column}, {config}", mean, "", "no compander", mean / base, None))
        print(f"| {run} | {' | '.join(cells)} |")
    plot(results, args.plot, args)
    print(f"\nplot: {args.plot}")
    report.finish()


if __name__ == "__main__":
    main()
