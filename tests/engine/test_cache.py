"""The expert cache on its own: the byte budget holds on every change, reads in flight count
against it, and eviction follows LRU or EdgeMoE's score (a direct computation of the rule)."""

import pytest
import torch

from moeweave.engine.cache import BudgetError, ExpertCache
from moeweave.store.reader import Expert

LAYERS = [0, 1, 2, 3]


def expert(layer, e, nbytes=100):
    return Expert(layer, e, None, None, None, {}, torch.empty(nbytes, dtype=torch.uint8))


def cache_with(policy, budget=300):
    evicted = []
    return ExpertCache(budget, policy, LAYERS, on_evict=lambda *key: evicted.append(key)), evicted


def put(cache, layer, e, nbytes=100, current=0):
    cache.reserve(nbytes, current, set())
    cache.fill(expert(layer, e, nbytes))


def test_reads_in_flight_count_against_the_budget():
    cache, _ = cache_with("lru")
    put(cache, 0, 0)
    assert cache.reserve(200, 0, set()) is not None
    assert (cache.used, cache.reserved) == (100, 200)
    assert cache.reserve(100, 0, {(0, 0)}, required=False) is None  # the only held expert is pinned
    with pytest.raises(BudgetError, match="do not fit in the budget of 300 bytes"):
        cache.reserve(100, 0, {(0, 0)})
    cache.release(200)
    assert cache.reserved == 0 and cache.peak == 300


def test_lru_evicts_the_least_recently_used():
    cache, evicted = cache_with("lru")
    for e in range(3):
        put(cache, 1, e)
    cache.get(1, 0)  # now the most recent
    put(cache, 2, 0)
    assert evicted == [(1, 1)]
    assert cache.used <= cache.budget


def test_pinned_experts_are_never_evicted():
    cache, evicted = cache_with("lru")
    for e in range(3):
        put(cache, 1, e)
    cache.reserve(100, 1, {(1, 0), (1, 1)})
    assert evicted == [(1, 2)]


def test_edgemoe_evicts_rare_experts_of_far_ahead_layers_first():
    cache, evicted = cache_with("edgemoe", budget=400)
    uses = {(1, 0): 5, (2, 0): 5, (3, 0): 1, (3, 1): 5}
    for (layer, e), count in uses.items():
        put(cache, layer, e)
        for _ in range(count):
            cache.record_use(layer, e)
    current = 0

    def score(key):  # L = -f / d, d = layers ahead of the current one
        ahead = (key[0] - current) % len(LAYERS) or len(LAYERS)
        return -uses[key] / ahead

    expected = max(uses, key=score)
    cache.reserve(100, current, set())
    assert evicted == [expected] == [(3, 0)]


@pytest.mark.parametrize("policy", ["edgemoe", "lru"])
def test_a_prefetch_evicts_only_experts_worth_less_than_its_guess(policy):
    cache, evicted = cache_with(policy, budget=200)
    uses = {(3, 0): 2, (3, 1): 6}  # held; d = 3 layers ahead of layer 0
    for (layer, e), count in uses.items():
        put(cache, layer, e)
        for _ in range(count):
            cache.record_use(layer, e)
    current, guess = 0, (1, 5)  # the guess is for the next layer: d = 1
    for _ in range(2):
        cache.record_use(*guess)
    assert cache.reserve(100, current, set(), required=False, guess=guess) is not None
    assert evicted == [(3, 0)]  # worth 2/3 < the guess's (2 + 1)/1 (for lru too: it is also the least recent)
    cache.fill(expert(*guess))  # the prefetch completed
    # The next guess is worth (0 + 1) / 1 = 1, and every held expert is worth at least that.
    assert cache.reserve(100, current, set(), required=False, guess=(1, 6)) is None
    assert evicted == [(3, 0)] and cache.reserved == 0


def test_a_read_reuses_the_buffer_of_an_expert_it_evicts_when_the_sizes_match():
    cache, evicted = cache_with("lru", budget=300)
    put(cache, 1, 0, nbytes=200)
    put(cache, 1, 1, nbytes=100)
    held = {key: cache.get(*key).buffer.data_ptr() for key in [(1, 0), (1, 1)]}
    buffer = cache.reserve(100, 0, {(1, 0)})
    assert evicted == [(1, 1)] and buffer.data_ptr() == held[(1, 1)] and buffer.numel() == 100
    buffer = cache.reserve(150, 0, set())  # evicts the 200-byte expert: a new buffer of 150
    assert evicted == [(1, 1), (1, 0)] and buffer.data_ptr() != held[(1, 0)] and buffer.numel() == 150
    assert buffer.data_ptr() % 4096 == 0
