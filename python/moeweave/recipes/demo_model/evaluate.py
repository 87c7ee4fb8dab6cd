"""Measures the demo model per domain: held-out perplexity against a unigram baseline, and routing.

Perplexity is taken over a document stream framed BOS ... EOS, cut into windows of T+1 tokens
that overlap by one token, so every token after the first is predicted exactly once (with at
most T tokens of context). Per-byte perplexity spreads the same total NLL over the UTF-8 bytes
of the text, which makes numbers comparable across tokenizers. The unigram baseline uses the
domain's own training-split token frequencies (add-one smoothed), the strongest context-free
model. Routing statistics count the top-k slots each layer gives each expert on the held-out
tokens; their entropy against log(E) says how evenly experts are used, and the Jensen-Shannon
divergence between domains says how much routing depends on the domain.

Dimension legend: W windows, T window length, V vocabulary, E experts, L layers, N tokens.
"""

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from moeweave.recipes.demo_model.tokenizer import encode_documents

SNIPPET_CHARS = 4000


def _batches(ids: list[int], seq_len: int, batch_size: int) -> list[torch.Tensor]:
    """Windows of T+1 tokens overlapping by one, stacked [W, T+1]; a shorter tail window goes alone."""
    windows = [torch.tensor(ids[i : i + seq_len + 1]) for i in range(0, len(ids) - 1, seq_len)]
    full = [w for w in windows if len(w) == seq_len + 1]
    tail = [w[None] for w in windows if len(w) < seq_len + 1]
    return [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)] + tail


@torch.no_grad()
def stream_stats(model: PreTrainedModel, ids: list[int], seq_len: int, batch_size: int = 16) -> dict:
    """Total NLL (nats) over ids[1:], and per-layer expert slot counts over all window inputs."""
    cfg = model.config
    counts = torch.zeros(cfg.num_hidden_layers, cfg.num_experts, dtype=torch.long)  # [L, E]
    nll, predicted = 0.0, 0
    for batch in _batches(ids, seq_len, batch_size):  # [W, T+1]
        out = model(input_ids=batch[:, :-1], output_router_logits=True)
        logits = out.logits.float()  # [W, T, V]
        nll += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
        )
        predicted += batch[:, 1:].numel()
        for layer, router_logits in enumerate(out.router_logits):  # each [W*T, E]
            top = router_logits.topk(cfg.num_experts_per_tok, dim=-1).indices  # [W*T, k]
            counts[layer] += torch.bincount(top.reshape(-1), minlength=cfg.num_experts)
    return {"nll": nll, "predicted": predicted, "expert_counts": counts}


def heldout_losses(
    model: PreTrainedModel, heldout_ids: dict[str, list[int]], seq_len: int, windows: int = 16
) -> dict[str, float]:
    """Mean token loss on each domain's first `windows` held-out windows: the cheap in-training check."""
    out = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, ids in heldout_ids.items():
            stats = stream_stats(model, ids[: windows * seq_len + 1], seq_len)
            out[name] = stats["nll"] / stats["predicted"]
    return out


def unigram_nll(train_ids: list[int], ids: list[int], vocab_size: int) -> float:
    """NLL (nats) of ids[1:] under add-one smoothed unigram frequencies of train_ids."""
    counts = torch.bincount(torch.tensor(train_ids), minlength=vocab_size).double() + 1  # [V]
    logp = counts.log() - counts.sum().log()  # [V]
    return float(-logp[torch.tensor(ids[1:])].sum())


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def routing_summary(counts: dict[str, torch.Tensor]) -> dict:
    """Per-domain usage fractions and entropies per layer, plus the cross-domain JS divergence."""
    fractions = {d: c.double() / c.sum(dim=-1, keepdim=True) for d, c in counts.items()}  # [L, E] each
    layers, experts = next(iter(counts.values())).shape
    out = {"uniform_entropy": math.log(experts), "domains": {}, "js_divergence_per_layer": []}
    for d, f in fractions.items():
        out["domains"][d] = {
            "usage_per_layer": [[round(float(x), 4) for x in row] for row in f],
            "entropy_per_layer": [round(_entropy(row), 4) for row in f],
        }
    for layer in range(layers):
        rows = torch.stack([f[layer] for f in fractions.values()])  # [D, E]
        js = _entropy(rows.mean(dim=0)) - sum(_entropy(r) for r in rows) / len(rows)
        out["js_divergence_per_layer"].append(round(js, 4))
    return out


def text_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, text: str, seq_len: int
) -> float:
    """Per-token perplexity of one document; what the test recomputes on the bundled snippets."""
    stats = stream_stats(model, encode_documents(tokenizer, [text]), seq_len)
    return math.exp(stats["nll"] / stats["predicted"])


def snippet(heldout: list[str], chars: int = SNIPPET_CHARS) -> str:
    """The first `chars` characters of a domain's held-out text, cut back to a whitespace."""
    text = "\n\n".join(heldout)
    if len(text) <= chars:
        return text
    cut = text.rfind(" ", 0, chars)
    return text[: cut if cut > 0 else chars]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    train_ids: dict[str, list[int]],
    heldout: dict[str, list[str]],
    seq_len: int,
) -> tuple[dict, dict[str, str]]:
    """eval.json's content and the per-domain held-out snippets it scores."""
    model.eval()
    domains, counts, snippets = {}, {}, {}
    for name, docs in heldout.items():
        ids = encode_documents(tokenizer, docs)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        stats = stream_stats(model, ids, seq_len)
        uni = unigram_nll(train_ids[name], ids, len(tokenizer))
        snippets[name] = snippet(docs)
        snippet_ids = encode_documents(tokenizer, [snippets[name]])
        counts[name] = stats["expert_counts"]
        domains[name] = {
            "heldout_tokens": stats["predicted"],
            "heldout_bytes": n_bytes,
            "ppl_token": math.exp(stats["nll"] / stats["predicted"]),
            "ppl_byte": math.exp(stats["nll"] / n_bytes),
            "unigram_ppl_token": math.exp(uni / stats["predicted"]),
            "unigram_ppl_byte": math.exp(uni / n_bytes),
            "snippet_chars": len(snippets[name]),
            "snippet_ppl_token": text_perplexity(model, tokenizer, snippets[name], seq_len),
            "snippet_unigram_ppl_token": math.exp(
                unigram_nll(train_ids[name], snippet_ids, len(tokenizer)) / (len(snippet_ids) - 1)
            ),
        }
    return {"seq_len": seq_len, "domains": domains, "routing": routing_summary(counts)}, snippets
