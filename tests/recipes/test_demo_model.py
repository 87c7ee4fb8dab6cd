"""Tests for the demo-model recipe: the bundled checkpoint's quality, and each recipe piece on tiny inputs.

Nothing here downloads: the corpus pieces run on synthetic text, and the bundled-model test uses
only files shipped in the package (it skips when the model has not been built).
"""

import json
import math
import random

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3MoeForCausalLM

from moeweave.recipes.demo_model import corpus, random_checkpoint
from moeweave.recipes.demo_model.evaluate import evaluate, heldout_losses, text_perplexity
from moeweave.recipes.demo_model.paths import DEMO_MODEL_DIR, PACKAGE_ROOT
from moeweave.recipes.demo_model.tokenizer import encode_documents, train_tokenizer
from moeweave.recipes.demo_model.train import ModelShape, TrainSettings, domain_batches, model_config, train


def test_bundled_model_loads_and_beats_unigram_on_snippets():
    report = json.loads((DEMO_MODEL_DIR / "eval.json").read_text())
    snippets = json.loads((DEMO_MODEL_DIR / "heldout_snippets.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    assert model.config.model_type == "qwen3_moe"
    assert set(snippets) == set(report["domains"]) and len(snippets) >= 3
    for name, text in snippets.items():
        recorded = report["domains"][name]
        ppl = text_perplexity(model, tokenizer, text, report["seq_len"])
        assert ppl <= 1.25 * recorded["snippet_ppl_token"], (name, ppl, recorded["snippet_ppl_token"])
        assert ppl <= 0.5 * recorded["snippet_unigram_ppl_token"], (
            name,
            ppl,
            recorded["snippet_unigram_ppl_token"],
        )


def test_bundled_checkpoint_is_small_and_standard():
    files = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= files
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size <= 40 * 2**20


def _synthetic_domains(seed: int = 0) -> dict[str, list[str]]:
    """Two easily told-apart toy domains: templated prose and templated code."""
    rng = random.Random(seed)
    nouns, verbs = ["cat", "dog", "bird", "river", "city", "tree"], ["sees", "likes", "follows", "finds"]
    prose = [
        " ".join(f"The {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}." for _ in range(12))
        for _ in range(40)
    ]
    code = [
        "\n".join(f"def f{i}(x):\n    return x + {rng.randint(0, 9)}" for i in range(6)) for _ in range(40)
    ]
    return {"prose": prose, "code": code}


def test_clean_wikitext_keeps_prose_and_drops_markup():
    raw = (
        "'''Anarchism''' is a [[political philosophy|philosophy]] {{Infobox|a={{b}}}}"
        "that rejects [[hierarchy]].<ref>Citation</ref> See [http://x.org the site].\n"
        "[[File:A.jpg|thumb|A [[flag]]]]\n== History ==\nIt began.\n== References ==\nJunk."
    )
    assert corpus.clean_wikitext(raw) == (
        "Anarchism is a philosophy that rejects hierarchy. See the site.\n\nHistory\nIt began."
    )


def test_split_is_deterministic_disjoint_and_holds_out_five_percent():
    docs = [f"document {i} " * (i % 7 + 1) for i in range(100)]
    train_docs, heldout = corpus.split(docs)
    assert (train_docs, heldout) == corpus.split(docs)
    assert sorted(train_docs + heldout) == sorted(docs)
    assert sum(map(len, heldout)) >= 0.05 * sum(map(len, docs))
    assert sum(map(len, heldout[1:])) < 0.05 * sum(map(len, docs))


def test_tokenizer_round_trips_and_loads_with_auto_tokenizer(tmp_path):
    domains = _synthetic_domains()
    tok = train_tokenizer((d for docs in domains.values() for d in docs), vocab_size=300)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = domains["code"][0] + " £ unseen ☃"
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == text
    stream = encode_documents(loaded, ["a b", "c"])
    assert stream[0] == loaded.bos_token_id and stream[-1] == loaded.eos_token_id
    assert stream.count(loaded.eos_token_id) == 2


@pytest.fixture
def one_thread():
    """Tiny matrices gain nothing from threads, and busy cores make OpenMP barriers stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_training_reduces_loss_and_evaluates(one_thread):
    torch.manual_seed(0)
    domains = _synthetic_domains()
    split = {name: corpus.split(docs, fraction=0.1) for name, docs in domains.items()}
    tok = train_tokenizer((d for tr, _ in split.values() for d in tr), vocab_size=300)
    train_ids = {name: encode_documents(tok, tr) for name, (tr, _) in split.items()}
    heldout_ids = {name: encode_documents(tok, ho) for name, (_, ho) in split.items()}
    shape = ModelShape(
        layers=1,
        hidden=32,
        heads=2,
        kv_heads=1,
        head_dim=16,
        experts=4,
        top_k=2,
        expert_hidden=32,
        max_positions=64,
    )
    settings = TrainSettings(steps=60, batch_size=8, seq_len=32, lr=1e-2, warmup_fraction=0.1, evals=2)
    model = Qwen3MoeForCausalLM(model_config(shape, tok, settings.router_aux_loss_coef))
    before = heldout_losses(model, heldout_ids, settings.seq_len)
    curve = train(
        model,
        domain_batches(train_ids, settings.batch_size, settings.seq_len, 0),
        settings,
        lambda m: heldout_losses(m, heldout_ids, settings.seq_len),
    )
    after = {k[len("heldout_") :]: v for k, v in curve[-1].items() if k.startswith("heldout_")}
    assert curve[-1]["step"] == settings.steps
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] - 1.0
    for name in domains:
        assert after[name] < before[name] - 1.0, (name, before[name], after[name])

    ev, snippets = evaluate(model, tok, train_ids, {n: ho for n, (_, ho) in split.items()}, settings.seq_len)
    for name, d in ev["domains"].items():
        assert d["heldout_tokens"] == len(heldout_ids[name]) - 1
        assert math.isfinite(d["ppl_token"]) and d["ppl_token"] < d["unigram_ppl_token"]
        assert snippets[name] and d["snippet_ppl_token"] > 1
        usage = torch.tensor(ev["routing"]["domains"][name]["usage_per_layer"])  # [L, E]
        assert usage.shape == (1, 4) and torch.allclose(usage.sum(-1), torch.ones(1), atol=1e-3)


TINY = {
    "qwen3-30b-a3b": dict(
        hidden_size=64,
        moe_intermediate_size=32,
        num_experts=8,
        vocab_size=512,
        head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=1,
    ),
    "mixtral-8x7b": dict(
        hidden_size=64, intermediate_size=96, vocab_size=512, num_attention_heads=4, num_key_value_heads=2
    ),
    "deepseek-v2-lite": dict(
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        n_routed_experts=8,
        vocab_size=512,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=16,
        v_head_dim=16,
    ),
}


def _shapes(path) -> dict[str, list[int]]:
    with safe_open(path, "pt") as f:
        names = f.keys()  # safe_open is not iterable
        return {k: f.get_slice(k).get_shape() for k in names}


@pytest.mark.parametrize("preset", sorted(TINY))
def test_random_checkpoint_matches_transformers_layout(preset, tmp_path):
    cfg = random_checkpoint.preset_config(preset, 2, **TINY[preset])  # DeepSeek's first layer is dense
    out = random_checkpoint.write_random_checkpoint(cfg, tmp_path / "random")
    # The oracle: the layout transformers itself writes for the same config.
    reference = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    reference.save_pretrained(tmp_path / "reference")
    expected = _shapes(tmp_path / "reference" / "model.safetensors")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    written = {}
    for shard in set(index["weight_map"].values()):
        written.update(_shapes(out / shard))
    assert written == expected
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    weight = next(p for n, p in model.named_parameters() if n.endswith("q_proj.weight")).float()
    assert 0.01 < weight.std() < 0.03


def test_random_checkpoint_refuses_the_package_dir():
    cfg = random_checkpoint.preset_config("mixtral-8x7b", 1, **TINY["mixtral-8x7b"])
    target = PACKAGE_ROOT / "data" / "random-should-not-exist"
    with pytest.raises(ValueError, match="inside the package"):
        random_checkpoint.write_random_checkpoint(cfg, target)
    assert not target.exists()


@pytest.mark.parametrize(("experts", "tolerance"), [("fp32", 1.01), ("int8", 1.02), ("int4", 1.10)])
def test_bundled_model_on_moeweave_matches_transformers(experts, tolerance):
    """The bundled model through moeweave's own forward: perplexity on each held-out snippet
    against transformers' on the same tokens (the oracle)."""
    import torch.nn.functional as F

    from moeweave.models import load

    snippets = json.loads((DEMO_MODEL_DIR / "heldout_snippets.json").read_text())
    ours, oracle = (
        load(DEMO_MODEL_DIR, experts=experts),
        AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR).float(),
    )
    for name, text in snippets.items():
        ids = torch.tensor([ours.tokenizer.encode(text).ids[:256]])
        with torch.no_grad():
            expected = F.cross_entropy(oracle(ids).logits[0, :-1].float(), ids[0, 1:]).exp()
        got = F.cross_entropy(ours(ids).logits[0, :-1].float(), ids[0, 1:]).exp()
        assert got <= tolerance * expected, (name, float(got), float(expected))
