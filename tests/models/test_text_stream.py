"""Streaming detokenization: the pieces TextStream emits, joined, must equal the tokenizer's own
decode of the whole sequence (the oracle), for byte-level BPE (multi-byte characters split across
tokens) and for a SentencePiece-style decoder that drops the first token's leading space."""

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.generate import TextStream


def _streamed(tokenizer, ids: list[int]) -> str:
    stream = TextStream(tokenizer)
    return "".join(stream.push(token) for token in ids)


def test_byte_level_bpe_with_split_characters():
    tokenizer = Tokenizer.from_file(str(DEMO_MODEL_DIR / "tokenizer.json"))
    text = "Zürich, naïve café — 東京 and 🚀 launch; the end. " * 20
    ids = tokenizer.encode(text).ids
    assert _streamed(tokenizer, ids) == tokenizer.decode(ids)
    # Random ids: byte tokens make partial UTF-8; what is emitted is always a prefix of the full
    # decode, and all of it once the last character is complete.
    for seed in range(5):
        sample = random.Random(seed).choices(range(tokenizer.get_vocab_size()), k=300)
        full, streamed = tokenizer.decode(sample), _streamed(tokenizer, sample)
        assert full.startswith(streamed)
        assert streamed == full or full.endswith("\ufffd")


def test_sentencepiece_style_leading_space():
    vocab = {"<unk>": 0, "▁the": 1, "▁cat": 2, "▁sat": 3, "s": 4, "▁on": 5, "▁mat": 6, ".": 7}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    ids = [1, 2, 3, 4, 5, 1, 6, 7, 1, 2]
    assert _streamed(tokenizer, ids) == tokenizer.decode(ids) == "the cat sats on the mat. the cat"
