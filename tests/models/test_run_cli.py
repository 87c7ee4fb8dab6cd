"""`moeweave run` generates text from a checkpoint with its tokenizer and reports its speed; stopped
by Ctrl-C or by a reader that closes the pipe, it ends without a traceback. Its argument errors
are in tests/test_cli_errors.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from moeweave.models import load

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


@pytest.fixture
def endless(checkpoint, tmp_path, interruptible_popen) -> subprocess.Popen:
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
    env = {**os.environ, "TQDM_DISABLE": "1"}  # the loading bar would share stderr with the line under test
    with interruptible_popen(command, env=env) as process:
        assert process.stdout.readline().startswith(f"# {path} ")
        streamed = ""
        while len(streamed) <= len(prompt):
            piece = process.stdout.read(1)
            assert piece, process.communicate(timeout=300)
            streamed += piece
        yield process
        process.kill()


@pytest.mark.parametrize("checkpoint", ["mixtral"], indirect=True)
def test_ctrl_c_during_run(endless):
    endless.send_signal(signal.SIGINT)
    _, err = endless.communicate(timeout=300)
    assert (endless.returncode, err) == (128 + signal.SIGINT, "moeweave run: interrupted\n")


@pytest.mark.parametrize("checkpoint", ["mixtral"], indirect=True)
def test_run_into_a_pipe_whose_reader_left(endless):
    """`moeweave run | head -c 10`: head exits, the next streamed token finds the pipe closed.
    The status a SIGPIPE gives, nothing on stderr (no traceback, no "Exception ignored")."""
    endless.stdout.close()
    _, err = endless.communicate(timeout=300)
    assert (endless.returncode, err) == (128 + signal.SIGPIPE, "")
