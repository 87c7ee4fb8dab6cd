"""Byte-level BPE tokenizer for the demo model, trained with HF `tokenizers` on the training splits.

Byte-level means every string round-trips (code's whitespace, the news corpus's pound sign), so
no unknown token exists. It is saved through `PreTrainedTokenizerFast` so that
`transformers.AutoTokenizer.from_pretrained(dir)` loads exactly this tokenizer.json rather than
rebuilding a model-family tokenizer from vocab and merges.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols up front, so rare bytes never fall outside the vocabulary.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def encode_documents(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> list[int]:
    """One token stream: each document framed as BOS ... EOS, so the model learns boundaries."""
    ids: list[int] = []
    # verbose=False: documents are longer than model_max_length by design; windows cut them later.
    for doc_ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
        ids.append(tokenizer.bos_token_id)
        ids.extend(doc_ids)
        ids.append(tokenizer.eos_token_id)
    return ids
