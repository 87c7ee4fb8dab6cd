"""Token generation with the KV cache: greedy or sampled (temperature, top-k, top-p, seed),
optionally streaming each new token's text to a callback as it is produced.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from moeweave.models.model import KVCache, MoEModel


@dataclass
class Generation:
    tokens: list[int]  # the new tokens only
    text: str | None  # their decoded text, when the model has a tokenizer
    prefill_seconds: float
    decode_seconds: float

    @property
    def decode_tokens_per_second(self) -> float:
        return max(len(self.tokens) - 1, 0) / self.decode_seconds if self.decode_seconds else 0.0


def next_token(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> int:
    """logits [V] -> a token id. temperature 0 means greedy."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the token that crosses p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


class TextStream:
    """Text of a growing token list, a piece at a time, decoding only the last few tokens per
    step (decoding everything every step is quadratic in the length). Each step decodes the
    window from `prefix` twice, with and without the newest tokens, and emits the difference:
    tokenizers that treat a sequence's first token specially (SentencePiece drops its leading
    space) then agree with the full decode, and a piece ending in an incomplete UTF-8 character
    waits for the next token."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix = self.read = 0  # tokens[prefix:read] was decoded and emitted

    def push(self, token: int) -> str:
        """Appends one token; returns the text it completes ('' while a character is partial)."""
        self.tokens.append(token)
        emitted = self.tokenizer.decode(self.tokens[self.prefix : self.read])
        text = self.tokenizer.decode(self.tokens[self.prefix :])
        if len(text) <= len(emitted) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        return text[len(emitted) :]


PREALLOCATED_TOKENS = 8192


def check_arguments(
    prompt: str | list[int] | torch.Tensor, max_new_tokens: int, temperature: float, top_k: int, top_p: float
) -> None:
    """ValueError naming the first of generate's arguments out of its range. Needs no model, so a
    caller can check before loading one (`moeweave run`). An empty text prompt is refused even
    where the tokenizer would add a BOS token to it."""
    if isinstance(prompt, str) and not prompt:
        raise ValueError("generate: the prompt is empty")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"generate: temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"generate: top_k must be >= 0 (0: no limit), got {top_k}")
    if not 0 < top_p <= 1:  # NaN fails this too
        raise ValueError(f"generate: top_p must be in (0, 1] (1: no limit), got {top_p}")


def tokens(
    model: MoEModel,
    prompt: str | list[int] | torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
) -> Iterator[int]:
    """The new tokens of one prompt (text, needing the model's tokenizer, or token ids), each
    yielded as soon as it is chosen; the first after the prompt's prefill. Under expert
    parallelism the rank then serves its experts until every rank is done, also when the caller
    stops early (closing the iterator) or a step fails."""
    check_arguments(prompt, max_new_tokens, temperature, top_k, top_p)
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("generate: a text prompt needs a model loaded with its tokenizer")
        prompt = model.tokenizer.encode(prompt).ids
    ids = torch.as_tensor(prompt, dtype=torch.int64).view(1, -1)
    if ids.numel() == 0:
        raise ValueError("generate: the prompt is empty")
    try:
        yield from _decode(model, ids, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
    finally:  # also on an error: the other ranks then fail at the layer check instead of waiting
        model.serve_experts_until_all_done()


def _decode(model, ids, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos) -> Iterator[int]:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = model.eos_token_id
    eos = set(eos) if isinstance(eos, list) else {eos}
    # The cache is allocated once for the whole generation, up to a length past which it grows
    # by doubling instead (a request for a billion tokens must not reserve them).
    cache = KVCache(capacity=ids.shape[1] + min(max_new_tokens, PREALLOCATED_TOKENS))
    logits = model(ids, cache=cache, logits_to_keep=1).logits[0, -1]
    for count in range(1, max_new_tokens + 1):
        token = next_token(logits, temperature, top_k, top_p, generator)
        yield token
        if (stop_at_eos and token in eos) or count == max_new_tokens:
            return
        logits = model(torch.tensor([[token]]), cache=cache).logits[0, -1]


def generate(
    model: MoEModel,
    prompt: str | list[int] | torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """Continue one prompt (text, needing the model's tokenizer, or token ids)."""
    import time

    stream = TextStream(model.tokenizer) if on_text is not None and model.tokenizer is not None else None
    new = []
    start = last = time.perf_counter()
    prefill = 0.0
    for token in tokens(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos):
        last = time.perf_counter()
        if not new:
            prefill, start = last - start, last
        new.append(token)
        if stream is not None and (piece := stream.push(token)):
            on_text(piece)
    decode = last - start  # to the last token: not the time serving other ranks' experts after it
    text = model.tokenizer.decode(new) if model.tokenizer is not None else None
    return Generation(tokens=new, text=text, prefill_seconds=prefill, decode_seconds=decode)
