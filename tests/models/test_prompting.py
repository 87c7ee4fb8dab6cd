"""What a checkpoint says about prompting it: its chat template rendered as transformers'
apply_chat_template renders it (the oracle), and generation_config.json's sampling defaults,
which `moeweave run` takes unless a flag overrides them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from moeweave.models import load
from moeweave.models.prompting import SAMPLING_DEFAULTS, chat_prompt, sampling_defaults

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["[UNK]", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "dog", "ran"]


def tokenizer_dir(tmp_path, template_in: str) -> Path:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": False}
    if template_in == "tokenizer_config.json":
        config["chat_template"] = CHATML
    else:
        (tmp_path / "chat_template.jinja").write_text(CHATML)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("template_in", ["tokenizer_config.json", "chat_template.jinja"])
def test_chat_prompt_renders_as_transformers_does(tmp_path, template_in):
    path = tokenizer_dir(tmp_path, template_in)
    oracle = PreTrainedTokenizerFast(
        tokenizer_file=str(path / "tokenizer.json"), bos_token="<s>", eos_token="</s>", chat_template=CHATML
    )
    want = oracle.apply_chat_template(
        [{"role": "user", "content": "the cat sat"}], tokenize=False, add_generation_prompt=True
    )
    assert chat_prompt(path, "the cat sat") == want


def test_chat_without_a_template_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="chat needs a chat template"):
        chat_prompt(tmp_path, "hello")


def test_sampling_defaults_follow_generation_config(tmp_path):
    assert sampling_defaults(tmp_path) == SAMPLING_DEFAULTS
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "top_p": 0.5, "top_k": None})
    )
    assert sampling_defaults(tmp_path) == {**SAMPLING_DEFAULTS, "top_p": 0.5}
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 5}))
    assert sampling_defaults(tmp_path) == {**SAMPLING_DEFAULTS, "temperature": 0.0, "max_new_tokens": 5}


@pytest.mark.parametrize("checkpoint", ["qwen3_moe"], indirect=True)
def test_run_takes_greedy_decoding_from_generation_config_and_chats(checkpoint, tmp_path):
    """A checkpoint whose generation_config.json says do_sample false decodes greedily without
    --temperature 0; with --chat the model sees the rendered template."""
    _, source = checkpoint
    path = shutil.copytree(source, tmp_path / "model")
    tokenizer_dir(path, "tokenizer_config.json")
    (path / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 6}))
    command = [str(Path(sys.executable).with_name("moeweave")), "run", str(path), "--prompt", "the cat",
               "--experts", "bf16", "--chat"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    prompt = chat_prompt(path, "the cat")
    expected = load(path, experts="bf16").generate(prompt, max_new_tokens=6, temperature=0)
    assert len(expected.tokens) == 6
    assert prompt + expected.text in output
