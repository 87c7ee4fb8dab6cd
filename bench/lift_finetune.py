"""LIFT (moeweave.train.lift.SparseAdamW) against dense AdamW and PEFT's LoRA: optimizer state,
optimizer step time, and a short fine-tune of the bundled model at equal trainable parameters.

Part 1, the optimizer alone, on matrices of real model shapes (4096 x 4096 and 4096 x 11008, fp32,
LoRA-equivalent k = (m + n) r with r = --rank): state bytes and the time of one step of
SparseAdamW against torch.optim.AdamW (foreach), both on the same dense gradient. The physical
limit of the dense step is streaming its 7 arrays (read weight, gradient, two moments; write
weight, two moments) at the STREAM triad bandwidth measured in the same run.

Part 2, the bundled model (Qwen3-MoE-shaped, 6 layers x 16 experts) tuned on the system's C headers
(a domain it never saw; bench/esft_domains.py's data and held-out split) for --steps batches, the
same batches in the same order, from the same start, each run at its own learning rate
(--lr-full, --lr-lora, --lr-lift; the defaults are each method's best held-out loss after 60 steps
among full 1e-4/3e-4/1e-3, LoRA 3e-3/1e-2, LIFT 1e-3/3e-3/1e-2/3e-2): full fine-tuning with AdamW, LoRA of rank --rank (PEFT) on the
attention projections and every expert (transformers 5's fused expert tensors through PEFT's
target_parameters: one rank-r LoRA per expert), and LIFT on the same matrices with the same
trainable-parameter count per matrix. Reported: trainable parameters, optimizer state, the median
training step, and held-out loss on the tuned domain and on the model's own "docs" domain.

    python bench/lift_finetune.py [--steps 150] [--rank 8]
"""

import argparse
import statistics
import time

import peft
import torch
import transformers
from common import Report, Row, median_seconds, stream_triad_gbps
from esft_domains import DOMAINS, base_model, batches, heldout_loss, windows

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.recipes.demo_model.corpus import split
from moeweave.train import lift

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of a torch optimizer's state tensors (its 0-dim step counters left out)."""
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values() if t.dim())


def optimizer_alone(report: Report, rank: int, triad_gbps: float) -> None:
    for shape in [(4096, 4096), (4096, 11008)]:
        weight = torch.nn.Parameter(torch.randn(shape) * 0.02)
        weight.grad = torch.randn(shape) * 1e-3
        dense = torch.optim.AdamW([weight], lr=1e-5, foreach=True)
        dense_seconds = median_seconds(dense.step, repeat=5)
        bound = 7 * weight.numel() * 4 / (triad_gbps * 1e9)
        sparse = lift.SparseAdamW(torch.nn.Sequential(torch.nn.Linear(shape[1], shape[0], bias=False)),
                                  rank=128, lora_rank=rank, lr=1e-5, update_interval=10**9)  # fmt: skip
        layer_weight = next(iter(sparse.state))
        layer_weight.grad = weight.grad
        sparse_seconds = median_seconds(sparse.step, repeat=5)
        label = f"{shape[0]}x{shape[1]} r={rank}"
        dense_bytes = state_bytes(dense)
        print(
            f"| {label} | {dense_bytes / 2**20:.0f} MiB | {sparse.state_bytes() / 2**20:.1f} MiB "
            f"| {dense_bytes / sparse.state_bytes():.1f}x | {dense_seconds * 1e3:.1f} ms "
            f"({bound / dense_seconds:.2f} of bound) | {sparse_seconds * 1e3:.2f} ms "
            f"| {dense_seconds / sparse_seconds:.1f}x |",
            flush=True,
        )
        report.rows.append(Row("SparseAdamW step", label, sparse_seconds * 1e3, "ms", "AdamW",
                               dense_seconds / sparse_seconds, None))  # fmt: skip


def lora_model(rank: int):
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ATTENTION, target_parameters=EXPERTS)
    return peft.get_peft_model(base_model(), config)


def lift_targets(model) -> list[str]:
    return [
        name
        for name in lift.default_targets(model)
        if name.endswith(tuple(f"{t}.weight" for t in ATTENTION) + tuple(EXPERTS))
    ]


def train(model, optimizer, data) -> float:
    """Runs the steps; the median seconds of one (forward, backward, optimizer step)."""
    seconds = []
    model.train()
    for ids in data:
        start = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--lr-lora", type=float, default=3e-3)
    parser.add_argument("--lr-lift", type=float, default=3e-2)
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parser.parse_args()
    triad = stream_triad_gbps()
    report = Report(__file__, {"triad GB/s": triad})
    cpu = report.machine
    print(f"# {cpu['cpu']}, {cpu['cpus']} CPUs, STREAM triad {triad:.1f} GB/s\n")
    print("| matrix | AdamW state | LIFT state | smaller | AdamW step | LIFT step | faster |")
    print("|---|---|---|---|---|---|---|")
    optimizer_alone(report, args.rank, triad)

    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    splits = {name: split(DOMAINS[name]()) for name in ("c-headers", "docs")}
    data = batches(windows(splits["c-headers"][0], tokenizer, args.seq_len), args.batch, args.steps, seed=0)
    evals = {
        name: windows(heldout, tokenizer, args.seq_len)[: args.eval_windows]
        for name, (_, heldout) in splits.items()
    }
    model = base_model()
    results = {"base": (0, 0, None, {name: heldout_loss(model, rows) for name, rows in evals.items()})}

    model = base_model()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr_full)
    seconds = train(model, optimizer, data)
    state = state_bytes(optimizer)
    results["full fine-tuning (AdamW)"] = (
        sum(p.numel() for p in params),
        state,
        seconds,
        {n: heldout_loss(model, r) for n, r in evals.items()},
    )

    model = lora_model(args.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr_lora)
    seconds = train(model, optimizer, data)
    state = state_bytes(optimizer)
    results[f"LoRA r={args.rank} (PEFT)"] = (
        sum(p.numel() for p in params),
        state,
        seconds,
        {n: heldout_loss(model, r) for n, r in evals.items()},
    )

    model = base_model()
    optimizer = lift.SparseAdamW(
        model,
        rank=128,
        lora_rank=args.rank,
        lr=args.lr_lift,
        targets=lift_targets(model),
        update_interval=50,
        svd="exact",
    )
    trainable = sum(len(s["indices"]) for s in optimizer.state.values())
    seconds = train(model, optimizer, data)
    results[f"LIFT, LoRA-equivalent k (r={args.rank})"] = (
        trainable,
        optimizer.state_bytes(),
        seconds,
        {n: heldout_loss(model, r) for n, r in evals.items()},
    )

    setup = f"{args.steps} steps of {args.batch}x{args.seq_len} tokens of C headers"
    print(f"\n# bundled model, {setup}\n")
    print("| run | trainable params | optimizer state | step | c-headers held-out | docs held-out |")
    print("|---|---|---|---|---|---|")
    base = results["base"][3]
    for run, (trainable, state, seconds, losses) in results.items():
        cells = [
            f"{losses[n]:.3f}" + ("" if run == "base" else f" ({losses[n] - base[n]:+.3f})") for n in evals
        ]
        step = "-" if seconds is None else f"{seconds * 1e3:.0f} ms"
        print(f"| {run} | {trainable:,} | {state / 2**20:.1f} MiB | {step} | {' | '.join(cells)} |")
        report.rows.append(
            Row(
                run,
                "c-headers held-out loss",
                losses["c-headers"],
                "nats",
                "base",
                base["c-headers"] / losses["c-headers"],
                None,
            )
        )
    report.finish()


if __name__ == "__main__":
    main()
