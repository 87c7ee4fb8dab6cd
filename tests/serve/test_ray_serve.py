"""`moeweave serve --ray` on a real local Ray cluster: a head and a worker node started as separate
processes on loopback (`ray start`), the server joining it with two replicas. The official openai
client gets, for the base and several adapters spread over the replicas (more adapters than a
replica may hold, so replicas evict and reload), what the merged models generate alone; killing
the replica that holds accepted requests loses none of them (the gateway sends them again) and
the service keeps answering."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import openai
import pytest
import ray
from live import get, live_server, wait_for
from merged import merged_texts, synthetic_adapters

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.serve.ray import REPLICA_HEADER
from moeweave.serve.server import build

BIN = Path(sys.executable).parent
BASE = "demo_model"
PROMPT = "In 1905, the"
ADAPTERS = {"r1": (11, 0.25), "r2": (12, 0.5), "r3": (13, 0.25)}  # name -> (seed, fraction)
MAX_ADAPTERS = 1  # per replica: three adapters over two replicas make them evict and reload


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return synthetic_adapters(tmp_path_factory.mktemp("ray-adapters"), ADAPTERS)


@pytest.fixture(scope="module")
def cluster():
    """The Ray address of a head node and a worker node, each its own `ray start` process."""
    temp = tempfile.mkdtemp(prefix="mwray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    ray_cli = str(BIN / "ray")
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--include-dashboard=false",
                        "--temp-dir", temp, *common], check=True, env=env, capture_output=True)  # fmt: skip
        subprocess.run([ray_cli, "start", "--address", f"127.0.0.1:{port}", *common],
                       check=True, env=env, capture_output=True)  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def served(cluster, adapter_dir):
    """(URL, process) of `moeweave serve --ray` with two replicas of one request per step."""
    port = _free_port()
    env = {**os.environ, "TQDM_DISABLE": "1", "MOEWEAVE_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    argv = [str(BIN / "moeweave"), "serve", "--ray", "--address", cluster, "--replicas", "2", "--port", str(port),
            "--adapter-dir", str(adapter_dir), "--max-adapters", str(MAX_ADAPTERS), "--max-batch", "1"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in process.stdout:  # the server prints its URL once every replica is up
        lines.append(line)
        if line.startswith("# serving"):
            break
    assert process.poll() is None, "".join(lines)
    drain = threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True)
    drain.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", process
    finally:
        process.kill()  # the cluster goes next, Serve's application with it
        process.wait()


@pytest.fixture(scope="module")
def expected(adapter_dir, tmp_path_factory):
    """model name -> the merged model's greedy 16 tokens of PROMPT, run alone."""
    return merged_texts(adapter_dir, ADAPTERS, PROMPT, 16, lambda: tmp_path_factory.mktemp("merged"))


def test_adapters_across_replicas_answer_as_their_merged_models(served, expected):
    client = openai.OpenAI(base_url=served[0], api_key="unused", max_retries=0)
    models = {card.id: card.parent for card in client.models.list().data}
    assert models == {BASE: None, **{name: BASE for name in ADAPTERS}}
    for model in [BASE, "r1", "r2", "r3", "r1", "r2", "r3", BASE]:  # r1 and r2 get evicted and reloaded
        got = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0)
        assert got.choices[0].text == expected[model], model
        assert got.usage.completion_tokens == 16
    stream = client.completions.create(model="r2", prompt=PROMPT, max_tokens=16, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == expected["r2"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=4)


def test_concurrent_requests_for_more_adapters_than_replicas_hold(served, expected):
    """Requests that make replicas evict adapters other requests are still using: each finishes
    as its merged model, the eviction waiting for it."""
    client = openai.OpenAI(base_url=served[0], api_key="unused", max_retries=0)
    models = ["r1", "r2", "r3", BASE] * 2
    answers: dict[int, str] = {}

    def ask(index: int) -> None:
        got = client.completions.create(model=models[index], prompt=PROMPT, max_tokens=16, temperature=0)
        answers[index] = got.choices[0].text

    askers = [threading.Thread(target=ask, args=(index,)) for index in range(len(models))]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    assert [answers.get(index) for index in range(len(models))] == [expected[model] for model in models]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _retries(url: str) -> float:
    metrics = get(url.removesuffix("/v1") + "/metrics")
    return float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("moeweave_gateway_retries_total")
        )
    )


def test_killing_a_busy_replica_loses_no_accepted_request(served, cluster, adapter_dir):
    url, _ = served
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    long = dict(model="r3", prompt=PROMPT, max_tokens=600, temperature=0)
    # Where r3 lives now: Ray's multiplexing sends the next r3 requests there while it has room.
    raw = client.completions.with_raw_response.create(**{**long, "max_tokens": 1})
    replica = raw.headers[REPLICA_HEADER]
    ray.init(address=cluster, log_to_driver=False)
    try:
        actor = ray.get_actor(f"SERVE_REPLICA::moeweave#Replica#{replica}", namespace="serve")
        pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
        answers: dict[int, str] = {}

        def ask(index: int) -> None:
            answers[index] = client.completions.create(**long).choices[0].text

        retries_before = _retries(url)
        cpu_before = _cpu_seconds(pid)
        askers = [threading.Thread(target=ask, args=(index,)) for index in range(3)]
        for asker in askers:
            asker.start()
        # One request at a time per step (--max-batch 1): once the replica has computed for a while,
        # the first is generating and the others wait in its queue, all accepted, none answered.
        wait_for(lambda: _cpu_seconds(pid) - cpu_before > 0.2)
        assert not answers
        ray.kill(actor, no_restart=True)
        for asker in askers:
            asker.join()
    finally:
        ray.shutdown()
    assert _retries(url) > retries_before
    app, scheduler = build(DEMO_MODEL_DIR, [], adapter_dir, None, "int4", 4, 1, 8)
    try:
        with live_server(app) as single:
            oracle = openai.OpenAI(base_url=single, api_key="unused", max_retries=0, timeout=600)
            expected = oracle.completions.create(**long).choices[0].text
    finally:
        scheduler.stop()
    assert [answers[index] for index in range(3)] == [expected] * 3
    # The service keeps answering, the killed replica replaced.
    short = client.completions.create(**{**long, "max_tokens": 8}).choices[0].text
    assert short and expected.startswith(short)
