"""`moeweave esft score|select|train|export`: ESFT from the command line, on a Hugging Face MoE
checkpoint directory and plain-text data (.txt files, one document each, or .jsonl files with a
"text" field per line), tokenised with the checkpoint's tokenizer into windows of --seq-len.

    moeweave esft score  MODEL DATA... --by token --out scores.json
    moeweave esft select scores.json --p 0.2 --out expert_cfg.json
    moeweave esft train  MODEL DATA... --experts expert_cfg.json --out ADAPTER [--steps 100 --lr 1e-4]
    moeweave esft export TUNED_MODEL --experts expert_cfg.json --out ADAPTER
"""

import argparse
import json
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from moeweave.adapters.esft import read_selection, save_esft, write_selection
from moeweave.train import esft


def read_texts(paths: list[str]) -> list[str]:
    """The documents of .txt (a file each) and .jsonl ({"text": ...} per line) files."""
    docs = []
    for name in paths:
        path = Path(name)
        if path.suffix == ".jsonl":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if type(row) is not dict or type(row.get("text")) is not str:
                    raise ValueError(f"{path}:{number}: expected an object with a string 'text'")
                docs.append(row["text"])
        else:
            docs.append(path.read_text(encoding="utf-8"))
    if not any(doc.strip() for doc in docs):
        raise ValueError(f"no text in {', '.join(paths)}")
    return docs


def token_batches(model_dir: str, paths: list[str], seq_len: int, batch_size: int) -> list[torch.Tensor]:
    """The data as input_ids batches [B, seq_len]: documents joined by the end-of-text token and cut
    into windows (a final window shorter than seq_len is dropped unless it is the only one)."""
    import transformers

    if seq_len < 2 or batch_size < 1:
        raise ValueError(
            f"--seq-len must be at least 2 and --batch-size at least 1, got {seq_len}, {batch_size}"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids: list[int] = []
    for doc in read_texts(paths):
        ids += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    windows = [w for w in windows if len(w) == seq_len] or windows[:1]
    return [torch.tensor(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]


def _model(model_dir: str):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _out_file(path: str, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")
    print(f"wrote {path}")


def score(args) -> None:
    batches = token_batches(args.model, args.data, args.seq_len, args.batch_size)
    scores = esft.expert_scores(_model(args.model), batches, by=args.by)
    body = {"by": args.by, "scores": {str(layer): s.tolist() for layer, s in scores.items()}}
    _out_file(args.out, json.dumps(body) + "\n")


def select(args) -> None:
    body = json.loads(Path(args.scores).read_text(encoding="utf-8"))
    if type(body) is not dict or type(body.get("scores")) is not dict:
        raise ValueError(f"{args.scores}: expected the output of `moeweave esft score`")
    scores = {
        int(layer): torch.tensor(values, dtype=torch.float64) for layer, values in body["scores"].items()
    }
    selection = esft.select_experts(scores, args.p)
    write_selection(selection, args.out)
    chosen = sum(map(len, selection.values()))
    total = sum(len(s) for s in scores.values())
    print(f"wrote {args.out}: {chosen} of {total} routed experts ({chosen / total:.1%})")


def train(args) -> None:
    if args.steps < 1 or not args.lr > 0:
        raise ValueError(f"--steps must be at least 1 and --lr positive, got {args.steps}, {args.lr}")
    selection = read_selection(args.experts)
    batches = token_batches(args.model, args.data, args.seq_len, args.batch_size)
    model = _model(args.model)
    torch.manual_seed(args.seed)
    optimizer = torch.optim.AdamW(esft.freeze_except(model, selection), lr=args.lr, weight_decay=0.0)
    order = random.Random(args.seed)
    model.train()
    progress = tqdm(range(args.steps), desc="training selected experts", unit="step")
    for _ in progress:
        ids = batches[order.randrange(len(batches))]
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    esft.export_adapter(model, selection, args.out)
    print(f"wrote {args.out}")


def export(args) -> None:
    adapter = esft.tuned_experts(_model(args.model), read_selection(args.experts))
    adapter.name = Path(args.out).name
    save_esft(adapter, args.out)
    print(f"wrote {args.out}")


def add_arguments(add, esft_commands) -> None:
    """The four subcommands, added with cli.py's `add(name, handler, summary, subcommands)`."""

    def data_arguments(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("model", help="Hugging Face MoE checkpoint directory (transformers loads it)")
        sub.add_argument(
            "data", nargs="+", help=".txt files (a document each) or .jsonl files with a 'text' field"
        )
        sub.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
        sub.add_argument("--batch-size", type=int, default=4, help="windows per batch (default 4)")

    scoring = add("score", score, "score each routed expert on the data, per layer", esft_commands)
    data_arguments(scoring)
    scoring.add_argument(
        "--by", choices=esft.SCORES, default="token", help="token selection ratio or gate score"
    )
    scoring.add_argument("--out", required=True, help="the scores as JSON")
    selecting = add("select", select, "choose each layer's experts reaching a score mass p", esft_commands)
    selecting.add_argument("scores", help="the output of `moeweave esft score`")
    selecting.add_argument(
        "--p", type=float, default=0.2, help="score mass per layer (default 0.2; 0.1 for gate)"
    )
    selecting.add_argument("--out", required=True, help="the ESFT expert_cfg.json to write")
    training = add("train", train, "train the selected experts only and export them", esft_commands)
    data_arguments(training)
    training.add_argument("--experts", required=True, help="expert_cfg.json of the experts to train")
    training.add_argument("--out", required=True, help="new or empty directory for the adapter")
    training.add_argument("--steps", type=int, default=100)
    training.add_argument("--lr", type=float, default=1e-4)
    training.add_argument("--seed", type=int, default=0)
    exporting = add(
        "export", export, "write the listed experts of a tuned checkpoint as an adapter", esft_commands
    )
    exporting.add_argument("model", help="the fine-tuned checkpoint directory")
    exporting.add_argument("--experts", required=True, help="expert_cfg.json of the tuned experts")
    exporting.add_argument("--out", required=True, help="new or empty directory for the adapter")
