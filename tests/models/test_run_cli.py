"""`moeweave run` generates text from a checkpoint with its tokenizer and reports its speed, in RAM
or through the on-device engine (--memory-budget); stopped by Ctrl-C or by a reader that closes
the pipe, it ends without a traceback. Its argument errors are in tests/test_cli_errors.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from moeweave.models import load
from moeweave.store import write_store

WORDS = [
    "[UNK]",
    "<eos>",
    *["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far", "away", "and", "then", "slept"],
]


def _with_tokenizer(checkpoint, tmp_path) -> Path:
    _, path = checkpoint
    target = tmp_path / "with-tokenizer"
    shutil.copytree(path, target)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(target / "tokenizer.json"))
    return target


def test_run_streams_the_greedy_continuation(checkpoint, tmp_path):
    path = _with_tokenizer(checkpoint, tmp_path)
    command = [str(Path(sys.executable).with_name("moeweave")), "run", str(path), "--prompt", "the cat sat",
               "--max-new-tokens", "8", "--temperature", "0", "--experts", "bf16"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    expected = load(path, experts="bf16").generate("the cat sat", max_new_tokens=8)
    assert "the cat sat" + expected.text in output.replace("\n", "")
    assert "tokens/s" in output


def test_run_without_tokenizer_is_a_clear_error(checkpoint):
    _, path = checkpoint
    result = subprocess.run(
        [str(Path(sys.executable).with_name("moeweave")), "run", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 1
    assert (
        result.stderr == f"moeweave run: {path} has no tokenizer.json, so a text prompt cannot be encoded\n"
    )


def test_run_uses_the_checkpoint_dtype_by_default(checkpoint, tmp_path):
    path = _with_tokenizer(checkpoint, tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    command = [str(Path(sys.executable).with_name("moeweave")), "run", str(path), "--prompt", "the dog ran",
               "--max-new-tokens", "6", "--temperature", "0"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "bfloat16 dense weights" in output
    expected = load(path, experts="int4", dtype=torch.bfloat16).generate("the dog ran", max_new_tokens=6)
    assert "the dog ran" + expected.text in output.replace("\n", "")


def engine_budget(path: Path, tmp_path: Path, bits: int) -> str:
    """A budget of one layer's experts plus half of the others': above what a step needs at once,
    below the total, so the engine really offloads."""
    manifest = write_store(path, tmp_path / "budget-probe", bits=bits, progress=False)
    per_layer = Counter()
    for extent in manifest.extents:
        per_layer[extent.layer] += extent.length
    largest = max(per_layer.values())
    return str(largest + (sum(per_layer.values()) - largest) // 2)


def test_run_through_the_engine_streams_the_in_ram_continuation(checkpoint, tmp_path):
    path = _with_tokenizer(checkpoint, tmp_path)
    command = [str(Path(sys.executable).with_name("moeweave")), "run", str(path), "--prompt", "the cat sat",
               "--max-new-tokens", "8", "--temperature", "0", "--stats",
               "--memory-budget", engine_budget(path, tmp_path, bits=4)]  # fmt: skip
    env = {**os.environ, "MOEWEAVE_CACHE_DIR": str(tmp_path / "cache")}
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    expected = load(path, experts="int4").generate("the cat sat", max_new_tokens=8)
    assert "through the engine" in output
    assert "the cat sat" + expected.text in "".join(
        line for line in output.splitlines() if not line.startswith("#")
    )
    assert "#     all " in output and "evictions" in output
    assert "# roofline: " in output and "GB/s (STREAM triad)" in output


@pytest.fixture
def endless(checkpoint, tmp_path, interruptible_popen, through_engine) -> subprocess.Popen:
    """`moeweave run` on a checkpoint without an EOS token, asked for a billion tokens: it
    generates until stopped. Returned once it has streamed text past the prompt: it is then
    generating, past the first op, which loads moeweave._C (moeweave._native takes an interrupt
    during that load for a failed load, falls back to the reference ops and goes on)."""
    path = _with_tokenizer(checkpoint, tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["eos_token_id"]
    (path / "config.json").write_text(json.dumps(config))
    prompt = "the cat"
    command = [str(Path(sys.executable).with_name("moeweave")), "run", str(path), "--prompt", prompt,
               "--max-new-tokens", "1000000000", "--experts", "bf16"]  # fmt: skip
    if through_engine:
        command += ["--memory-budget", engine_budget(path, tmp_path, bits=16)]
    # The loading bar would share stderr with the line under test; the engine's store goes to tmp.
    env = {**os.environ, "TQDM_DISABLE": "1", "MOEWEAVE_CACHE_DIR": str(tmp_path / "cache")}
    with interruptible_popen(command, env=env) as process:
        assert process.stdout.readline().startswith(f"# {path} ")
        streamed = ""
        while len(streamed) <= len(prompt):
            piece = process.stdout.read(1)
            assert piece, process.communicate(timeout=300)
            streamed += piece
        yield process
        process.kill()


@pytest.mark.parametrize("through_engine", [False, True], ids=["in-ram", "engine"])
@pytest.mark.parametrize("checkpoint", ["mixtral"], indirect=True)
def test_ctrl_c_during_run(endless):
    endless.send_signal(signal.SIGINT)
    _, err = endless.communicate(timeout=300)
    assert (endless.returncode, err) == (128 + signal.SIGINT, "moeweave run: interrupted\n")


@pytest.mark.parametrize("through_engine", [False, True], ids=["in-ram", "engine"])
@pytest.mark.parametrize("checkpoint", ["mixtral"], indirect=True)
def test_run_into_a_pipe_whose_reader_left(endless):
    """`moeweave run | head -c 10`: head exits, the next streamed token finds the pipe closed.
    The status a SIGPIPE gives, nothing on stderr (no traceback, no "Exception ignored")."""
    endless.stdout.close()
    _, err = endless.communicate(timeout=300)
    assert (endless.returncode, err) == (128 + signal.SIGPIPE, "")
