"""Calibration text for `moeweave convert`: a text file, or for the bundled model its held-out
corpus snippets; cut into token chunks, and the mean next-token loss of a model over them."""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from moeweave.models.bundled import DEMO_MODEL_DIR

CHUNK_TOKENS = 256


def calibration_text(hf_dir: Path, calib: Path | None) -> str | None:
    """The text of --calib, else the bundled model's held-out snippets when hf_dir is the bundled
    model, else None."""
    if calib is not None:
        return Path(calib).read_text(encoding="utf-8")
    if Path(hf_dir).resolve() == DEMO_MODEL_DIR.resolve():
        return "\n\n".join(json.loads((DEMO_MODEL_DIR / "heldout_snippets.json").read_text()).values())
    return None


def token_chunks(tokenizer, text: str, max_tokens: int) -> list[torch.Tensor]:
    """The first max_tokens tokens of text, in chunks of CHUNK_TOKENS ([1, S] each)."""
    ids = tokenizer.encode(text).ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("the calibration text is too short: it needs at least 2 tokens")
    return [torch.tensor([ids[i : i + CHUNK_TOKENS]]) for i in range(0, len(ids), CHUNK_TOKENS)]


@torch.no_grad()
def mean_loss(model, chunks: list[torch.Tensor]) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position of the chunks."""
    total, count = 0.0, 0
    for ids in chunks:
        if ids.shape[1] < 2:
            continue
        logits = model(ids).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(loss)
