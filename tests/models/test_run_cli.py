"""`moeweave run` generates text from a checkpoint with its tokenizer and reports its speed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
        [str(Path(sys.executable).with_name("moeweave")), "run", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "has no tokenizer.json" in result.stderr


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
