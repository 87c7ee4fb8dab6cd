"""moeweave serve, driven by the official openai client over loopback: every adapter's greedy
output is its merged model's (the base with the adapter's experts substituted, run alone);
32 concurrent streams over 4 adapters and the base all finish with those outputs; an adapter
unloaded under load lets the request started on it finish on it; bad requests get OpenAI-shaped
4xx and the server keeps serving; a client that leaves mid-stream frees its slot."""

import asyncio
import threading

import openai
import pytest
from live import get, live_server, post, wait_for
from merged import merged_texts, synthetic_adapters
from tokenizers import Tokenizer

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.serve.server import build

BASE = "demo_model"
PROMPT = "In 1905, the"
NEW_TOKENS = 16
ADAPTERS = {"a1": (1, 0.25), "a2": (2, 0.5), "a3": (3, 0.25), "a4": (4, 0.5)}  # name -> (seed, fraction)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return synthetic_adapters(tmp_path_factory.mktemp("adapters"), ADAPTERS)


@pytest.fixture(scope="module")
def expected(adapter_dir, tmp_path_factory):
    """model name -> the merged model's greedy text of PROMPT, run alone."""
    out = merged_texts(adapter_dir, ADAPTERS, PROMPT, NEW_TOKENS, lambda: tmp_path_factory.mktemp("merged"))
    assert len(set(out.values())) > 2  # the adapters change the output
    return out


@pytest.fixture(scope="module")
def served(adapter_dir):
    app, scheduler = build(DEMO_MODEL_DIR, [], adapter_dir, None, "int4", 8, 32, 64)
    try:
        with live_server(app) as url:
            yield url, scheduler
    finally:
        scheduler.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0], api_key="unused")


def complete(client, model, **kwargs):
    return client.completions.create(
        model=model, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, **kwargs
    )


def test_models_lists_the_base_and_each_adapter_with_its_parent(client):
    cards = {card.id: card for card in client.models.list().data}
    assert set(cards) == {BASE, *ADAPTERS}
    assert all(cards[name].model_extra["parent"] == BASE for name in ADAPTERS)


@pytest.mark.parametrize("model", [BASE, *ADAPTERS])
def test_each_model_answers_as_its_merged_model(client, expected, model):
    response = complete(client, model)
    assert response.choices[0].text == expected[model]
    assert response.usage.prompt_tokens == len(
        Tokenizer.from_file(str(DEMO_MODEL_DIR / "tokenizer.json")).encode(PROMPT).ids
    )
    assert response.usage.completion_tokens <= NEW_TOKENS


def test_32_concurrent_streams_over_four_adapters_and_the_base(served, expected):
    models = [[BASE, *ADAPTERS][i % 5] for i in range(32)]

    async def one(client, model):
        stream = await client.completions.create(
            model=model, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
            usage = chunk.usage or usage
        return "".join(pieces), usage

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=served[0], api_key="unused", max_retries=0) as client:
            return await asyncio.gather(*(one(client, model) for model in models))

    results = asyncio.run(all_of_them())
    assert [text for text, _ in results] == [expected[model] for model in models]
    assert all(usage is not None and usage.completion_tokens > 0 for _, usage in results)


def test_chat_needs_a_template_and_says_so(client):
    with pytest.raises(openai.BadRequestError, match="chat template"):
        client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}])


def test_unloading_under_load_lets_the_running_request_finish_on_its_adapter(served, client, expected):
    url, scheduler = served
    stream = client.completions.create(
        model="a2", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True
    )
    chunks = iter(stream)
    first = next(chunks).choices[0].text  # the request is running now
    answer = {}
    thread = threading.Thread(
        target=lambda: answer.update(r=post(f"{url}/unload_adapter", {"lora_name": "a2"}))
    )
    thread.start()
    wait_for(lambda: "a2" not in scheduler.models())  # draining: no new request on a2
    with pytest.raises(openai.NotFoundError):
        complete(client, "a2")
    text = first + "".join(chunk.choices[0].text for chunk in chunks)
    thread.join()
    assert text == expected["a2"]
    assert answer["r"][0] == 200
    assert "a2" not in {card.id for card in client.models.list().data}
    status, body = post(f"{url}/load_adapter", {"lora_name": "a2", "lora_path": "a2"})
    assert status == 200, body
    assert complete(client, "a2").choices[0].text == expected["a2"]


def test_unloading_lets_a_waiting_request_finish_on_its_adapter(adapter_dir, expected):
    """One request per step: while a base request runs, a request for a1 waits in the queue and
    a1 is unloaded; the waiting request still runs on a1, and a1 goes after it. The scheduler is
    held after the step that sends the base request's first text until a1's request is queued,
    so the base request cannot finish first however fast the machine is."""
    app, scheduler = build(DEMO_MODEL_DIR, [], adapter_dir, None, "int4", 8, 1, 8)
    queued, metrics_step = threading.Event(), scheduler.on_step

    def hold_once_text_is_out(sched, requests):
        metrics_step(sched, requests)
        if any(request.sent for request in sched.running):
            queued.wait()

    scheduler.on_step = hold_once_text_is_out
    try:
        with live_server(app) as url:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            stream = iter(client.completions.create(model=BASE, prompt=PROMPT, max_tokens=NEW_TOKENS,
                                                    temperature=0, stream=True))  # fmt: skip
            first = next(stream).choices[0].text  # running, and holding the only place in the batch
            waiting = {}
            asker = threading.Thread(
                target=lambda: waiting.update(text=complete(client, "a1").choices[0].text)
            )
            asker.start()
            wait_for(lambda: scheduler.waiting == 1)
            unload = scheduler.unload_adapter("a1")
            queued.set()
            assert first + "".join(chunk.choices[0].text for chunk in stream) == expected[BASE]
            asker.join()
            assert waiting.get("text") == expected["a1"]
            unload.result(timeout=120)
            assert "a1" not in scheduler.models()
    finally:
        scheduler.stop()


def test_bad_requests_get_4xx_and_the_server_keeps_serving(served, client, expected):
    url, _ = served
    status, body = post(f"{url}/completions", b"{not json")
    assert status == 400 and "message" in body["error"]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=BASE, prompt=PROMPT, max_tokens=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        complete(client, "no-such-adapter")
    with pytest.raises(openai.BadRequestError, match="exceed the model's context"):
        client.completions.create(model=BASE, prompt="the " * 5000, max_tokens=4)
    status, body = post(f"{url}/load_adapter", {"lora_name": "x", "lora_path": "../elsewhere"})
    assert status == 400 and "outside the adapter directory" in body["error"]["message"]
    assert post(f"{url}/load_adapter", {"lora_name": "x", "lora_path": "absent"})[0] == 400
    assert complete(client, BASE).choices[0].text == expected[BASE]


def test_a_client_leaving_mid_stream_frees_its_slot(served, client):
    _, scheduler = served
    stream = client.completions.create(model=BASE, prompt=PROMPT, max_tokens=900, temperature=0, stream=True)
    next(iter(stream))
    assert len(scheduler.running) == 1
    stream.close()
    wait_for(lambda: not scheduler.running)


def test_metrics_and_health(served, client):
    url, _ = served
    complete(client, BASE)
    root = url.removesuffix("/v1")
    assert get(f"{root}/health") == '{"status":"ok"}'
    metrics = get(f"{root}/metrics")
    assert 'moeweave_requests_total{model="demo_model",outcome="ok"}' in metrics
    assert 'moeweave_adapter_loaded{adapter="a1"} 1.0' in metrics
    assert "moeweave_queue_depth" in metrics and "moeweave_request_latency_seconds_bucket" in metrics


def test_an_api_key_is_required_when_set(adapter_dir):
    app, scheduler = build(DEMO_MODEL_DIR, [], None, "sesame", "int4", 2, 4, 4)
    try:
        with live_server(app) as url:
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key="wrong").models.list()
            assert openai.OpenAI(base_url=url, api_key="sesame").models.list().data[0].id == BASE
    finally:
        scheduler.stop()


def test_a_full_queue_answers_429(adapter_dir):
    app, scheduler = build(DEMO_MODEL_DIR, [], None, None, "int4", 2, 4, 1)
    scheduler.stop()  # nothing runs: the first request stays queued
    with live_server(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=1)
        with pytest.raises(openai.APITimeoutError):
            complete(client, BASE)
        wait_for(lambda: scheduler.waiting == 1)
        with pytest.raises(openai.RateLimitError):
            complete(client, BASE)


def test_adapters_over_a_base_offloaded_by_the_engine(adapter_dir, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    app, scheduler = build(DEMO_MODEL_DIR, [], adapter_dir, None, "int4", 8, 32, 64, memory_budget="2MiB")
    try:
        with live_server(app) as url:
            client = openai.OpenAI(base_url=url, api_key="unused")
            for model in [BASE, "a1", "a2"]:
                assert complete(client, model).choices[0].text == expected[model]
        stats = app.state.engine.stats()
        assert stats["evictions"] > 0 and stats["cache_peak_bytes"] <= 2 << 20  # it really offloaded
    finally:
        scheduler.stop()
        app.state.engine.close()
