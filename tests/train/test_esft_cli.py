"""`moeweave esft score|select|train|export` on the bundled model: the commands' files against the
Python API on the same token windows, export against the checkpoint's own expert tensors, the
trained adapter against its base, and bad input in one line."""

import json

import pytest
import torch
from safetensors import safe_open

from moeweave import cli
from moeweave.adapters import load_esft, read_selection
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.spec import spec_from_config
from moeweave.train import esft
from moeweave.train.esft_cli import token_batches

TEXT = "def scale(values, factor):\n    return [v * factor for v in values]\n" * 12


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps({"text": TEXT[i:]}) for i in (0, 7)) + "\n")
    return str(path)


def run(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


def test_score_select_train_export(data, tmp_path):
    scores_file, config, adapter = (
        tmp_path / "scores.json",
        tmp_path / "expert_cfg.json",
        tmp_path / "adapter",
    )
    window = ("--seq-len", "32", "--batch-size", "2")
    assert run("esft", "score", DEMO_MODEL_DIR, data, *window, "--by", "gate", "--out", scores_file) == 0
    written = {
        int(k): torch.tensor(v, dtype=torch.float64)
        for k, v in json.loads(scores_file.read_text())["scores"].items()
    }
    model = esft_model()
    expected = esft.expert_scores(
        model, token_batches(str(DEMO_MODEL_DIR), [data], 32, 2), by="gate", progress=False
    )
    assert written.keys() == expected.keys()
    for layer in expected:
        torch.testing.assert_close(written[layer], expected[layer])

    assert run("esft", "select", scores_file, "--p", "0.1", "--out", config) == 0
    assert read_selection(config) == esft.select_experts(expected, 0.1)

    assert run("esft", "train", DEMO_MODEL_DIR, data, *window, "--experts", config, "--out", adapter,
               "--steps", "2", "--lr", "1e-2") == 0  # fmt: skip
    spec = spec_from_config(json.loads((DEMO_MODEL_DIR / "config.json").read_text()))
    trained = load_esft(adapter, spec)
    base = load_esft(_export_base(tmp_path, config), spec)
    assert trained.selection == base.selection == {k: sorted(v) for k, v in read_selection(config).items()}
    assert all(not torch.equal(trained.experts[key][0], base.experts[key][0]) for key in trained.experts)


def esft_model():
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32)


def _export_base(tmp_path, config):
    """`esft export` of the untrained checkpoint: its listed experts, as stored in its safetensors."""
    out = tmp_path / "base-adapter"
    assert run("esft", "export", DEMO_MODEL_DIR, "--experts", config, "--out", out) == 0
    with (
        safe_open(DEMO_MODEL_DIR / "model.safetensors", "pt") as checkpoint,
        safe_open(out / "experts.safetensors", "pt") as exported,
    ):
        for name in exported.keys():  # noqa: SIM118 (safe_open has no `in`)
            assert torch.equal(exported.get_tensor(name), checkpoint.get_tensor(name).float()), name
    return out


def test_bad_input_is_one_line(data, tmp_path, capsys):
    not_scores = tmp_path / "list.json"
    not_scores.write_text("[1, 2]")
    assert run("esft", "select", not_scores, "--out", tmp_path / "x.json") == 1
    assert "expected the output of `moeweave esft score`" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert run("esft", "score", DEMO_MODEL_DIR, empty, "--out", tmp_path / "s.json") == 1
    assert "no text in" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    assert run("esft", "score", DEMO_MODEL_DIR, bad, "--out", tmp_path / "s.json") == 1
    assert "bad.jsonl:1: expected an object with a string 'text'" in capsys.readouterr().err
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"experts": {"0": [0]}}))
    assert (
        run(
            "esft",
            "train",
            DEMO_MODEL_DIR,
            data,
            "--experts",
            config,
            "--out",
            tmp_path / "a",
            "--steps",
            "0",
        )
        == 1
    )
    assert "--steps must be at least 1" in capsys.readouterr().err
