"""ESFT end to end on the bundled model: experts scored and selected on a text, trained in
transformers, exported; `moeweave serve`'s adapter path (AdapterSet over the bf16 base) then gives
the trained transformers model's greedy tokens (in bf16, as served), which differ from the base's."""

import torch
import transformers

import moeweave.models
from moeweave.adapters import AdapterSet, load_esft
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.model import KVCache
from moeweave.train import esft

TEXT = (
    "The for statement is used to iterate over the elements of a sequence (such as a string, tuple "
    "or list) or other iterable object. The expression list is evaluated once; it should yield an "
    "iterable object. An iterator is created for the result of the expression list."
)
PROMPT = "The while statement is used for"
NEW_TOKENS = 16


def served_tokens(model, adapter_ids: torch.Tensor, prompt: list[int]) -> list[int]:
    cache, out = KVCache(), []
    logits = model(torch.tensor([prompt]), cache=cache, logits_to_keep=1, adapters=adapter_ids).logits[:, -1]
    for _ in range(NEW_TOKENS):
        token = logits.argmax(-1)
        out.append(int(token))
        logits = model(token[:, None], cache=cache, adapters=adapter_ids).logits[:, -1]
    return out


def transformers_tokens(model, prompt: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
        )
    return out[0, len(prompt) :].tolist()


def test_served_adapter_gives_the_trained_models_tokens(tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    prompt = tokenizer(PROMPT)["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32)
    base_tokens = transformers_tokens(model.to(torch.bfloat16), prompt)
    model = model.float()
    selection = esft.select_experts(esft.expert_scores(model, [ids], progress=False), p=0.3)
    optimizer = torch.optim.AdamW(esft.freeze_except(model, selection), lr=2e-2)
    model.train()
    for _ in range(4):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    path = esft.export_adapter(model, selection, tmp_path / "for-loops")
    expected = transformers_tokens(model.to(torch.bfloat16), prompt)
    assert expected != base_tokens  # the tuned experts change what the model says

    served = moeweave.models.load(DEMO_MODEL_DIR, experts="bf16", dtype=torch.bfloat16)
    adapters = AdapterSet(served, max_adapters=2)
    adapters.load(load_esft(path, served.spec))
    assert served_tokens(served, adapters.ids(["for-loops"]), prompt) == expected
    assert served_tokens(served, adapters.ids([None]), prompt) == base_tokens
