"""The on-device engine on the bundled model: offloaded greedy tokens equal the all-in-RAM model's
(moeweave.models.load of the same checkpoint at the same bitwidth), for each predictor, cache
policy and io backend, under budgets far below the experts' bytes; the budget holds; reads never
outlive a generation; a corrupt expert is named and leaves the engine usable; bad arguments are
refused clearly."""

import shutil
import statistics

import pytest
import torch
from dense_bytes import expected_dense_bytes
from safetensors.torch import load_file

import moeweave.models
from moeweave.engine import POLICIES, PREDICTORS, BudgetError, Engine, parse_size
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.store.manifest import DENSE_FILE, StoreError, load_manifest

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def in_ram_tokens():
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    return model.generate(PROMPT, max_new_tokens=20).tokens


def expert_bytes(store) -> int:
    return sum(extent.length for extent in load_manifest(store).extents)


def assert_nothing_in_flight(engine):
    assert engine.provider.pending == {}
    assert engine.provider.cache.reserved == 0
    assert engine.store._in_flight == {}


@pytest.mark.parametrize("predictor", PREDICTORS)
@pytest.mark.parametrize("cache", POLICIES)
def test_offloaded_tokens_equal_the_in_ram_model(demo_store, in_ram_tokens, backend, predictor, cache):
    budget = expert_bytes(demo_store) // 4
    with Engine.open(
        demo_store, memory_budget=budget, predictor=predictor, cache=cache, backend=backend
    ) as engine:
        assert engine.store.backend == {"uring": "io_uring", "pread": "pread"}[backend]
        assert list(engine.generate_tokens(PROMPT, max_new_tokens=20)) == in_ram_tokens
        stats = engine.stats()
        assert stats["cache_peak_bytes"] <= budget
        assert stats["evictions"] > 0 and stats["bytes_read"] > budget  # it really offloaded
        assert len(stats["per_token"]) == len(in_ram_tokens)
        assert_nothing_in_flight(engine)


def test_text_pieces_make_the_in_ram_text(demo_store, in_ram_tokens):
    tokenizer = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16).tokenizer
    with Engine.open(demo_store, memory_budget="2MiB") as engine:
        assert "".join(engine.generate(PROMPT, max_new_tokens=20)) == tokenizer.decode(in_ram_tokens)


def test_a_generation_stopped_early_leaves_no_read_behind(demo_store):
    with Engine.open(demo_store, memory_budget="2MiB") as engine:
        for _ in zip(range(3), engine.generate_tokens(PROMPT, max_new_tokens=20), strict=False):
            pass
        assert_nothing_in_flight(engine)
        assert engine.stats()["cache_bytes"] <= parse_size("2MiB")


def test_a_corrupt_expert_is_named_and_the_engine_stays_usable(demo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    layer_two = [e for e in load_manifest(store).extents if e.layer == 2]
    blob = bytearray((store / load_manifest(store).files[layer_two[0].file]).read_bytes())
    for extent in layer_two:  # every expert of layer 2, so the generation must meet one
        blob[extent.offset + 100] ^= 0xFF
    (store / load_manifest(store).files[layer_two[0].file]).write_bytes(bytes(blob))
    with Engine.open(store, memory_budget="2MiB") as engine:
        with pytest.raises(StoreError, match=r"layer 2 expert \d+: checksum mismatch"):
            list(engine.generate_tokens(PROMPT, max_new_tokens=5))
        assert_nothing_in_flight(engine)
        assert engine.store.read(layer=3, expert=1).layer == 3  # the store still reads
        with pytest.raises(StoreError, match="layer 2 expert"):  # and fails the same way again
            list(engine.generate_tokens(PROMPT, max_new_tokens=5))


def test_a_budget_below_one_layer_is_refused_with_the_sizes(demo_store):
    with pytest.raises(BudgetError, match=r"memory budget 100\.0 KiB is below one layer's experts"):
        Engine.open(demo_store, memory_budget="100KiB")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"memory_budget": "lots"}, "not a byte size: 'lots'"),
        ({"memory_budget": "0"}, "must be positive"),
        ({"predictor": "oracle"}, "predictor must be one of"),
        ({"cache": "fifo"}, "cache must be one of"),
    ],
)
def test_bad_arguments_are_refused(demo_store, arguments, message):
    with pytest.raises(ValueError, match=message):
        Engine.open(demo_store, **arguments)


def test_an_hf_directory_is_converted_once_into_the_cache_directory(monkeypatch, tmp_path, in_ram_tokens):
    monkeypatch.setenv("MOEWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    with Engine.open(DEMO_MODEL_DIR, memory_budget="2MiB") as engine:
        assert engine.store.path.parent == tmp_path / "cache" / "stores"
        assert list(engine.generate_tokens(PROMPT, max_new_tokens=20)) == in_ram_tokens
        written = (engine.store.path / "manifest.json").stat().st_mtime_ns
    with Engine.open(DEMO_MODEL_DIR) as engine:
        assert (engine.store.path / "manifest.json").stat().st_mtime_ns == written


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_the_smallest_budget_one_layer_still_decodes_losslessly(demo_store, in_ram_tokens, predictor):
    """At exactly one layer's experts, a prompt step needs the whole budget: protecting the next
    layer's predicted experts must then give way instead of failing the step."""
    per_layer = {}
    for extent in load_manifest(demo_store).extents:
        per_layer[extent.layer] = per_layer.get(extent.layer, 0) + extent.length
    with Engine.open(demo_store, memory_budget=max(per_layer.values()), predictor=predictor) as engine:
        assert list(engine.generate_tokens(PROMPT, max_new_tokens=20)) == in_ram_tokens
        assert_nothing_in_flight(engine)


@pytest.mark.parametrize("tied", [True, False])
def test_the_roofline_counts_what_a_decode_step_moves(tiny_checkpoint, tmp_path, monkeypatch, tied):
    monkeypatch.setenv("MOEWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    path = tiny_checkpoint("qwen3_moe", tie_word_embeddings=tied)
    with Engine.open(path, predictor="none") as engine:
        list(engine.generate_tokens([5, 6, 7], max_new_tokens=6))
        steps = engine.per_token[1:]
        roofline = engine.roofline()
        dense_file = engine.store.path / DENSE_FILE
    weights = load_file(dense_file)
    assert ("lm_head.weight" not in weights) == tied
    # A step reads one row of the embedding and every other dense weight as held (INT8
    # projections by default); a tied output head reads all of the embedding.
    dense = expected_dense_bytes(weights, "int8", torch.float32)
    read = statistics.mean(s.bytes_read for s in steps)
    moved = dense + statistics.mean(s.expert_bytes_needed for s in steps)
    assert roofline["bytes_read_per_token"] == pytest.approx(read)
    assert roofline["bytes_moved_per_token"] == pytest.approx(moved)
    bound = max(read / roofline["disk_bytes_per_second"], moved / roofline["memory_bytes_per_second"])
    assert roofline["ratio"] == pytest.approx(bound / statistics.mean(s.step_seconds for s in steps))
