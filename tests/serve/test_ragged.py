"""The server's batched forward: sequences of different lengths and positions, each with its own
cache and joining at different steps, get the logits the model computes for each alone (every
fixture architecture, MLA included, in fp32); and the scheduler's seeded sampling draws the
tokens generate() draws with the same seed."""

import pytest
import torch

import moeweave.models
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.model import KVCache
from moeweave.serve.ragged import Chunk, forward_chunks
from moeweave.serve.scheduler import Request, Sampling, Scheduler

PROMPTS = [[5, 9, 2, 7, 1], [3, 3, 8], [11, 4, 6, 2, 9, 10, 12]]


def test_each_sequence_gets_the_logits_it_gets_alone(checkpoint):
    _, path = checkpoint
    model = moeweave.models.load(path, experts="bf16", dtype=torch.float32)
    alone = []
    for prompt in PROMPTS:  # prompt, then two decode steps of fixed tokens
        cache = KVCache()
        rows = [model(torch.tensor([prompt]), cache=cache).logits[0, -1]]
        for token in (4, 8):
            rows.append(model(torch.tensor([[token]]), cache=cache).logits[0, -1])
        alone.append(rows)
    # Sequence 2 joins one step late, so steps mix prompts and decode tokens of different positions.
    chunks = [Chunk(list(PROMPTS[0])), Chunk(list(PROMPTS[1]))]
    got = [[] for _ in PROMPTS]
    for step in range(4):
        active = [i for i in range(len(PROMPTS)) if (i < 2 and step < 3) or (i == 2 and step >= 1)]
        if step == 1:
            chunks.append(Chunk(list(PROMPTS[2])))
        batch = [chunks[i] for i in active]
        logits = forward_chunks(model, batch)
        for i, row in zip(active, logits, strict=True):
            got[i].append(row)
            chunks[i].ids = [(4, 8, 0)[len(got[i]) - 1]]
    for rows, expected in zip(got, alone, strict=True):
        for ours, theirs in zip(rows, expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_seeded_sampling_draws_what_generate_draws():
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    prompt = model.tokenizer.encode("Once upon a time").ids
    expected = model.generate(prompt, max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, seed=7).tokens
    scheduler = Scheduler(model, 1024)
    events = []
    request = Request(prompt, Sampling(12, 0.9, 40, 0.9, 7), events.append)
    scheduler.submit(request)
    scheduler._admit()
    while scheduler.running:
        scheduler._step()
    assert request.tokens == expected
    assert events[-1].kind == "done" and events[-1].completion_tokens == len(expected)
    assert "".join(e.text for e in events[:-1]) == model.tokenizer.decode(expected)


@pytest.mark.parametrize("stop", ["the", "\n"])
def test_a_stop_string_ends_the_text_before_it(stop):
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    full = model.generate("Once upon a time", max_new_tokens=40, stop_at_eos=False).text
    assert stop in full
    scheduler = Scheduler(model, 1024)
    events = []
    scheduler.submit(
        Request(model.tokenizer.encode("Once upon a time").ids, Sampling(40, 0.0, stop=[stop]), events.append)
    )
    scheduler._admit()
    while scheduler.running:
        scheduler._step()
    assert "".join(e.text for e in events[:-1]) == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop"


def test_an_adapter_being_unloaded_waits_for_its_queued_requests():
    from moeweave.adapters import AdapterSet, random_selection, synth_adapter

    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    adapters = AdapterSet(model, max_adapters=1)
    adapters.load(synth_adapter(DEMO_MODEL_DIR, random_selection(model.spec, 0.25, 1), name="a"))
    scheduler = Scheduler(model, 1024, adapters)
    events, other = [], []
    scheduler.submit(Request([5, 6, 7], Sampling(4, 0.0), events.append, adapter="a"))
    scheduler.submit(Request([5, 6, 7], Sampling(4, 0.0), other.append))
    scheduler.unload_adapter("a")
    scheduler._run_commands()
    scheduler._unload_idle()  # nothing running on "a" yet, but a request for it waits: it stays
    assert "a" in adapters.index and "a" not in scheduler.models()
    scheduler._admit()
    while scheduler.running:
        scheduler._step()
    assert events[-1].kind == "done" and events[-1].completion_tokens == 4
    assert other[-1].kind == "done" and other[-1].completion_tokens == 4
    scheduler._unload_idle()
    assert "a" not in adapters.index
    # A request that reached the queue just after the drain had looked (submit runs on another
    # thread) fails cleanly instead of running on a slot that is gone.
    scheduler._waiting.put(Request([5, 6, 7], Sampling(4, 0.0), events.append, adapter="a"))
    scheduler._admit()
    assert (events[-1].kind, events[-1].text) == ("error", "adapter 'a' was unloaded")
