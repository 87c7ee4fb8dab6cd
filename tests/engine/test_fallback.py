"""The low-bit fallback: misses are read from the store's INT2 copy (written by `moeweave convert
--fallback-bits 2`). With every expert fitting in the budget and nothing prefetched, each expert's
first use is a miss, so the engine computes exactly as the all-in-RAM model at INT2; under a tight
budget every demand read is a small one; a store without the copy is refused clearly."""

import os
import shutil

import pytest
import torch

import moeweave.models
from moeweave.engine import Engine
from moeweave.engine.fallback import DIRECTORY
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.store.manifest import DENSE_FILE, load_manifest

PROMPT = "Once upon a time"


def test_with_room_for_every_expert_the_tokens_are_the_int2_models(demo_store):
    expected = moeweave.models.load(DEMO_MODEL_DIR, experts="int2", dtype=torch.bfloat16)
    with Engine.open(demo_store, predictor="none", fallback=True) as engine:
        tokens = list(engine.generate_tokens(PROMPT, max_new_tokens=20))
        stats = engine.stats()
    assert tokens == expected.generate(PROMPT, max_new_tokens=20).tokens
    assert stats["fallback"] and stats["fallback_reads"] == stats["demand_reads"] > 0


@pytest.mark.parametrize("predictor", ["stale-gate", "none"])
def test_under_a_tight_budget_misses_read_the_small_copy(demo_store, predictor):
    full = {(e.layer, e.expert): e.length for e in load_manifest(demo_store).extents}
    small = {(e.layer, e.expert): e.length for e in load_manifest(demo_store / DIRECTORY).extents}
    assert max(small.values()) < min(full.values())
    with Engine.open(
        demo_store, memory_budget=sum(full.values()) // 4, predictor=predictor, fallback=True
    ) as engine:
        list(engine.generate_tokens(PROMPT, max_new_tokens=20))
        stats = engine.stats()
        assert engine.provider.fallback._in_flight == {} and engine.provider.cache.reserved == 0
    assert stats["fallback_reads"] == stats["demand_reads"] > 0
    assert stats["cache_peak_bytes"] <= sum(full.values()) // 4
    prefetched = stats["bytes_read"] - stats["demand_reads"] * max(small.values())
    assert prefetched <= stats["prefetches"] * max(full.values())


def test_the_copy_shares_the_dense_weights(demo_store):
    assert os.path.samefile(demo_store / DENSE_FILE, demo_store / DIRECTORY / DENSE_FILE)


def test_a_store_without_the_copy_is_refused(demo_store, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(demo_store, bare, ignore=shutil.ignore_patterns(DIRECTORY))
    with pytest.raises(FileNotFoundError, match="--fallback-bits 2"):
        Engine.open(bare, fallback=True)
    with Engine.open(bare, memory_budget="2MiB") as engine:  # still usable without it
        assert len(list(engine.generate_tokens(PROMPT, max_new_tokens=4))) == 4
