"""Every Python code block of README.md and docs/*.md runs. A document's blocks run in order in
one namespace (a block may use what an earlier one imported or built); before each block the
tiny inputs the examples describe are set afresh (tensors, data, the bundled model for checkpoint
paths, a store converted from it), so an example's `y = ...` does not feed the next one's `y`.
An example talking to a server at http://127.0.0.1:8000/v1 gets a live one: the bundled model
with a synthetic adapter "demo". A renamed function, a changed signature or a wrong example fails
here instead of in a user's hands."""

import re
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
from live import live_server

import moeweave.cpu
from moeweave.adapters import random_selection, save_esft, synth_adapter
from moeweave.formats.hf_checkpoint import read_config
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.spec import spec_from_config
from moeweave.store.writer import write_store

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(document: Path) -> list[str]:
    return BLOCK.findall(document.read_text())


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("docs") / "store"
    write_store(DEMO_MODEL_DIR, store, progress=False)
    return store


SERVER = "http://127.0.0.1:8000/v1"


def _serve(stack: ExitStack, directory: Path) -> str:
    """A live server of the bundled model with adapter "demo"; its URL."""
    from moeweave.serve.server import build

    spec = spec_from_config(read_config(DEMO_MODEL_DIR))
    save_esft(synth_adapter(DEMO_MODEL_DIR, random_selection(spec, 0.25, 0), name="demo"), directory / "demo")
    app, scheduler = build(DEMO_MODEL_DIR, [], directory, None, "int4", 2, 8, 8)
    stack.callback(scheduler.stop)
    return stack.enter_context(live_server(app))


def _inputs() -> dict:
    """The free names of the documents' examples, small and consistent: H = 64 hidden, I = 32
    intermediate, E = 4 experts, T = 5 tokens, K = 2 experts per token."""
    g = torch.Generator().manual_seed(0)
    hidden, inter, experts, tokens = 64, 32, 4, 5
    expert_shapes = ((inter, hidden), (inter, hidden), (hidden, inter))
    features = np.random.default_rng(0).normal(size=(120, 2))
    target = features @ [1.0, -2.0] + np.random.default_rng(1).normal(size=120)
    data = {f"{name}{suffix}": value for suffix, rows in (("", slice(0, 60)), ("_train", slice(0, 60)),
            ("_cal", slice(60, 90)), ("_test", slice(90, 120)))
            for name, value in (("X", features[rows]), ("y", target[rows]))}  # fmt: skip
    return {
        **data,
        "gate": torch.randn(tokens, inter, generator=g),
        "up": torch.randn(tokens, inter, generator=g),
        "topk_ids": torch.randint(0, experts, (tokens, 2), generator=g, dtype=torch.int32),
        "topk_weights": torch.rand(tokens, 2, generator=g),
        "tok_adapter": torch.tensor([-1, 0, 0, -1, 0], dtype=torch.int32),
        "remap": torch.tensor([[0, 1, 2, 3], [4, 1, 5, 3]], dtype=torch.int32),
        "q": torch.randn(2, 4, 3, 16, generator=g),
        "k": torch.randn(2, 2, 6, 16, generator=g),
        "v": torch.randn(2, 2, 6, 16, generator=g),
        "mask": torch.rand(2, 1, 3, 6, generator=g) > 0.3,
        "cos": torch.randn(4, 16, generator=g),
        "sin": torch.randn(4, 16, generator=g),
        "x": torch.randn(tokens, hidden, generator=g),
        "hidden": torch.randn(tokens, hidden, generator=g),
        "weight": torch.randn(hidden, generator=g),
        "w": torch.randn(48, hidden, generator=g),
        "experts": [
            tuple(torch.randn(*shape, generator=g) for shape in expert_shapes) for _ in range(experts)
        ],
        "input_ids": torch.tensor([[5, 17, 42, 7]]),
        "path": str(DEMO_MODEL_DIR),
    }


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(d)], ids=lambda d: d.name)
def test_python_blocks_run(document, demo_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEWEAVE_CACHE_DIR", str(tmp_path / "cache"))  # stores the engine converts
    paths = {"hf-checkpoint-dir": DEMO_MODEL_DIR, "path/to/hf-checkpoint": DEMO_MODEL_DIR,
             "store-dir": demo_store, "/tmp/qa-cache": tmp_path / "qa-cache"}  # fmt: skip
    inputs, namespace = _inputs(), {}
    threads = moeweave.cpu.num_threads()
    with ExitStack() as servers:
        if any(SERVER in block for block in python_blocks(document)):
            paths[SERVER] = _serve(servers, tmp_path / "adapters")
        try:
            run_blocks(document, paths, inputs, namespace)
        finally:
            moeweave.cpu.set_num_threads(threads)


def run_blocks(document: Path, paths: dict, inputs: dict, namespace: dict) -> None:
    for number, block in enumerate(python_blocks(document), 1):
        for placeholder, real in paths.items():
            block = block.replace(f'"{placeholder}"', repr(str(real)))
        namespace.update(inputs)
        exec(compile(block, f"{document.name} python block {number}", "exec"), namespace)
