"""Adapters over one base in RAM: a batch mixing the base and several adapters gives every row
the greedy tokens of its merged model (the base checkpoint with the adapter's experts
substituted, loaded and run alone); unloading gives back the pool's pages and the rows fall back
to the base; memory per adapter is its tuned experts' bytes."""

import pytest
import torch
from merged import merged_checkpoint

import moeweave.models
from moeweave.adapters import BASE, AdapterSet, random_selection, synth_adapter
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.model import KVCache

PROMPT = "In 1905, the"
NEW_TOKENS = 16


def load(path):
    return moeweave.models.load(path, experts="int4", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def adapters():
    spec = load(DEMO_MODEL_DIR).spec
    return [
        synth_adapter(DEMO_MODEL_DIR, random_selection(spec, fraction, seed), seed=seed, name=f"a{seed}")
        for seed, fraction in [(1, 0.25), (2, 0.5)]
    ]


@pytest.fixture(scope="module")
def merged_tokens(adapters, tmp_path_factory):
    """name -> the merged model's greedy tokens, run alone (None: the base)."""
    out = {None: load(DEMO_MODEL_DIR).generate(PROMPT, max_new_tokens=NEW_TOKENS, stop_at_eos=False).tokens}
    for adapter in adapters:
        path = merged_checkpoint(DEMO_MODEL_DIR, adapter, tmp_path_factory.mktemp(adapter.name) / "merged")
        out[adapter.name] = load(path).generate(PROMPT, max_new_tokens=NEW_TOKENS, stop_at_eos=False).tokens
    return out


def greedy_batch(model, adapter_ids: torch.Tensor) -> list[list[int]]:
    """Greedy tokens of PROMPT for each row of one batch, row b on adapter adapter_ids[b]."""
    ids = torch.tensor([model.tokenizer.encode(PROMPT).ids] * len(adapter_ids))
    cache, rows = KVCache(), [[] for _ in adapter_ids]
    logits = model(ids, cache=cache, logits_to_keep=1, adapters=adapter_ids).logits[:, -1]
    for _ in range(NEW_TOKENS):
        chosen = logits.argmax(-1)
        for row, token in zip(rows, chosen.tolist(), strict=True):
            row.append(token)
        logits = model(chosen[:, None], cache=cache, adapters=adapter_ids).logits[:, -1]
    return rows


def test_a_mixed_batch_gives_each_row_its_merged_models_tokens(adapters, merged_tokens):
    assert len(set(map(tuple, merged_tokens.values()))) == 3  # the adapters really change the output
    model = load(DEMO_MODEL_DIR)
    serving = AdapterSet(model, max_adapters=4)
    for adapter in adapters:
        serving.load(adapter)
    names = [None, "a1", "a2", "a1", None, "a2"]
    rows = greedy_batch(model, serving.ids(names))
    assert rows == [merged_tokens[name] for name in names]


def test_unloading_frees_the_pages_and_leaves_the_others_intact(adapters, merged_tokens):
    model = load(DEMO_MODEL_DIR)
    serving = AdapterSet(model, max_adapters=4)
    assert serving.resident_bytes() == 0
    for adapter in adapters:
        serving.load(adapter)
    loaded = serving.resident_bytes()
    serving.unload("a1")
    assert serving.resident_bytes() < loaded
    assert greedy_batch(model, serving.ids(["a2", None])) == [merged_tokens["a2"], merged_tokens[None]]
    with pytest.raises(KeyError, match="'a1' is not loaded"):
        serving.ids(["a1"])
    serving.load(adapters[0])  # into the freed slots again
    assert greedy_batch(model, serving.ids(["a1"])) == [merged_tokens["a1"]]
    assert serving.resident_bytes() == loaded


def test_memory_per_adapter_is_its_tuned_experts_bytes(adapters):
    model = load(DEMO_MODEL_DIR)
    serving = AdapterSet(model, max_adapters=4)
    for adapter in adapters:
        before = serving.resident_bytes()
        serving.load(adapter)
        tuned = 0
        for layer, e in adapter.experts:
            slot = serving.remap[layer][serving.index[adapter.name] + 1, e].item()
            tuned += sum(
                t.numel() * t.element_size() for w in serving.tables[layer].experts[slot] for t in tensors(w)
            )
        assert tuned <= serving.resident_bytes() - before <= 1.02 * tuned + 4096 * len(adapter.experts)


def tensors(w):
    return [w] if isinstance(w, torch.Tensor) else [t for t in (w.packed, w.scales, w.zeros) if t is not None]


def test_base_rows_without_adapters_and_bad_ids(adapters):
    model = load(DEMO_MODEL_DIR)
    with pytest.raises(ValueError, match="no adapters are loaded"):
        model(torch.tensor([[5, 6]]), adapters=torch.tensor([BASE]))
    serving = AdapterSet(model, max_adapters=1)
    serving.load(adapters[0])
    with pytest.raises(ValueError, match="already loaded"):
        serving.load(adapters[0])
    with pytest.raises(ValueError, match="all 1 adapter places are taken"):
        serving.load(adapters[1])
