"""Does auxiliary-loss-free load balancing (moeweave.train.balance) balance a small MoE trained
from scratch better than no balancing and than transformers' auxiliary load-balancing loss, at
similar language-modelling loss?

One Qwen3-MoE-shaped model (16 experts, top-2; sizes below), trained from the same initialisation
on the same batches of text: without balancing; with transformers' auxiliary loss
(`output_router_logits=True`, coefficient --aux-coef, Switch-style); and with ALF-LB (--rule, sign
by default) at each step size u of --rates, one bias update per optimizer step. Text: the Python
standard library's source and its language reference (the demo model's offline "code" and "docs"
domains), tokenised with the bundled model's tokenizer; 5 % of the documents held out. Reported
per run: the held-out cross-entropy (the auxiliary loss left out), MaxVio of the training batches
over the last quarter of the steps (mean), and MaxVio_global over the held-out set (expert counts
summed over it); MaxVio = (max_i c_i - mean c) / mean c per layer, averaged over layers. The
MaxVio of every step is plotted to --plot.

    python bench/alf_lb.py [--steps 400] [--rates 1e-3 1e-2] [--rule sign|linear|decay]
        [--plot docs/alf_lb_maxvio.png]
"""

import argparse
import statistics
import time

import torch
import transformers
from common import Report, Row
from matplotlib.figure import Figure

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.recipes.demo_model.corpus import code_documents, docs_documents, split
from moeweave.train import balance


def token_stream(docs: list[str], tokenizer) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids = []
    for doc in docs:
        ids += tokenizer(doc)["input_ids"] + [eos]
    return torch.tensor(ids)


def batches(stream: torch.Tensor, batch: int, length: int, steps: int, seed: int) -> list[torch.Tensor]:
    """`steps` batches [batch, length] of random windows of the stream."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - length, (steps, batch), generator=generator)
    return [torch.stack([stream[s : s + length] for s in row.tolist()]) for row in starts]


class RoutingCounts:
    """Expert counts [L, E] of every router's choices since the last reset (forward hooks)."""

    def __init__(self, model):
        self.routers = balance.routers(model)
        self.counts = torch.zeros(len(self.routers), self.routers[0].num_experts)
        for index, router in enumerate(self.routers):
            router.register_forward_hook(self._hook(index))

    def _hook(self, index: int):
        def hook(module, inputs, outputs):
            self.counts[index] += torch.bincount(outputs[2].flatten(), minlength=self.counts.shape[1])

        return hook

    def take(self) -> torch.Tensor:
        counts, self.counts = self.counts, torch.zeros_like(self.counts)
        return counts


def train(
    run: str, config, data: list[torch.Tensor], heldout: list[torch.Tensor], args, rate: float = 0.0
) -> dict:
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config).train()
    counter = RoutingCounts(model)
    balancer = (
        balance.attach(model, rule=args.rule, rate=rate, decay_steps=args.decay_steps) if rate else None
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
    vio, losses, start = [], [], time.perf_counter()
    for step, ids in enumerate(data):
        out = model(ids, labels=ids, output_router_logits=run == "auxiliary loss")
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if balancer is not None:
            balancer.step()
        vio.append(balance.max_vio(counter.take()))
        aux = 0.0 if out.aux_loss is None else out.aux_loss.item() * args.aux_coef
        losses.append(out.loss.item() - aux)  # the language-modelling loss alone
        if step % 50 == 0:
            print(f"  {run} step {step}: loss {losses[-1]:.3f}, MaxVio {vio[-1]:.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        counter.take()
        heldout_loss = statistics.mean(
            float(model(ids, labels=ids, output_router_logits=False).loss) for ids in heldout
        )
        heldout_vio = balance.max_vio(counter.take())
    tail = len(vio) * 3 // 4
    return {
        "maxvio per step": vio,
        "train loss (last quarter)": statistics.mean(losses[tail:]),
        "held-out loss": heldout_loss,
        "MaxVio batch (last quarter)": statistics.mean(vio[tail:]),
        "MaxVio_global held-out": heldout_vio,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-3, 1e-2], help="ALF-LB's bias step u")
    parser.add_argument("--rule", choices=balance.RULES, default="sign")
    parser.add_argument("--decay-steps", type=int, default=1000, help="the decay rule's n_0")
    parser.add_argument("--aux-coef", type=float, default=0.01)
    parser.add_argument("--plot", default="docs/alf_lb_maxvio.png")
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    train_docs, heldout_docs = split(code_documents(1_000_000) + docs_documents())
    data = batches(token_stream(train_docs, tokenizer), args.batch, args.length, args.steps, seed=0)
    heldout = batches(token_stream(heldout_docs, tokenizer), args.batch, args.length, 16, seed=1)
    config = transformers.Qwen3MoeConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, num_experts=16, num_experts_per_tok=2, moe_intermediate_size=128,
        intermediate_size=256, norm_topk_prob=False, router_aux_loss_coef=args.aux_coef, tie_word_embeddings=True,
        max_position_embeddings=args.length, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    results = {run: train(run, config, data, heldout, args) for run in ("no balancing", "auxiliary loss")}
    for rate in args.rates:
        run = f"ALF-LB, u = {rate:g}" + ("" if args.rule == "sign" else f", {args.rule} rule")
        results[run] = train(run, config, data, heldout, args, rate)

    report = Report(__file__, {})
    cpu = report.machine
    print(f"\n# {cpu['cpu']}, {cpu['cpus']} CPUs; {args.steps} steps of {args.batch}x{args.length} tokens\n")
    columns = [
        "train loss (last quarter)",
        "held-out loss",
        "MaxVio batch (last quarter)",
        "MaxVio_global held-out",
    ]
    print(f"| run | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for run, result in results.items():
        print(f"| {run} | {' | '.join(f'{result[c]:.3f}' for c in columns)} |")
        base = results["no balancing"]["MaxVio_global held-out"]
        report.rows.append(
            Row(run, "MaxVio_global", result["MaxVio_global held-out"], "", "no balancing",
                base / max(result["MaxVio_global held-out"], 1e-9), None)
        )  # fmt: skip
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for run, result in results.items():
        axes.plot(result["maxvio per step"], label=run, linewidth=1)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("MaxVio of the batch (mean over layers)")
    axes.set_yscale("log")
    axes.legend()
    axes.set_title("Qwen3-MoE-shaped, 16 experts top-2, from scratch")
    figure.tight_layout()
    figure.savefig(args.plot, dpi=100)
    print(f"\nplot: {args.plot}")
    report.finish()


if __name__ == "__main__":
    main()
