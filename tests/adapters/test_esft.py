"""The ESFT adapter format: what save_esft writes, load_esft reads back tensor for tensor (and
the legacy names without "model."); every way an adapter can mismatch its base is refused with
the file and the tensor named; `moeweave adapters synth` writes adapters the loader accepts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeweave.adapters import AdapterError, EsftAdapter, load_esft, random_selection, save_esft
from moeweave.formats.hf_checkpoint import read_config
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.spec import spec_from_config

SPEC = spec_from_config(read_config(DEMO_MODEL_DIR))
H, INTER = SPEC.hidden_size, SPEC.moe_intermediate_size


def random_adapter(selection, name="t") -> EsftAdapter:
    generator = torch.Generator().manual_seed(0)

    def weight(n, k):
        return torch.randn(n, k, generator=generator).bfloat16()

    experts = {
        (layer, e): (weight(INTER, H), weight(INTER, H), weight(H, INTER))
        for layer, experts in selection.items()
        for e in experts
    }
    return EsftAdapter(name, experts)


def test_save_then_load_gives_back_every_tensor(tmp_path):
    adapter = random_adapter({1: [3, 7], 4: [0]})
    save_esft(adapter, tmp_path / "a")
    stored = load_file(tmp_path / "a" / "experts.safetensors")
    assert sorted(stored) == sorted(
        f"model.layers.{layer}.mlp.experts.{e}.{p}_proj.weight"
        for layer, e in adapter.experts
        for p in ("gate", "up", "down")
    )
    loaded = load_esft(tmp_path / "a", SPEC)
    assert loaded.name == "a" and loaded.selection == {1: [3, 7], 4: [0]}
    for key, weights in adapter.experts.items():
        for ours, theirs in zip(loaded.experts[key], weights, strict=True):
            assert torch.equal(ours, theirs)


def test_the_legacy_names_without_model_prefix_load(tmp_path):
    adapter = random_adapter({2: [5]})
    save_esft(adapter, tmp_path / "a")
    file = tmp_path / "a" / "experts.safetensors"
    save_file({name.removeprefix("model."): t for name, t in load_file(file).items()}, file)
    assert torch.equal(load_esft(tmp_path / "a", SPEC).experts[(2, 5)][2], adapter.experts[(2, 5)][2])


def edited(tmp_path, edit_tensors=None, edit_config=None) -> Path:
    path = save_esft(random_adapter({1: [3, 7]}), tmp_path / "bad")
    if edit_tensors is not None:
        file = path / "experts.safetensors"
        tensors = load_file(file)
        edit_tensors(tensors)
        save_file(tensors, file)
    if edit_config is not None:
        config = json.loads((path / "expert_cfg.json").read_text())
        edit_config(config)
        (path / "expert_cfg.json").write_text(json.dumps(config))
    return path


GATE = "model.layers.1.mlp.experts.3.gate_proj.weight"


@pytest.mark.parametrize(
    "edit_tensors, edit_config, message",
    [
        (lambda t: t.pop(GATE), None, "missing, first 'model.layers.1.mlp.experts.3.gate_proj.weight'"),
        (lambda t: t.update({"model.layers.1.mlp.experts.9.up_proj.weight": t[GATE].clone()}), None,
         "layer 1 expert 9, which expert_cfg.json does not list"),
        (lambda t: t.update({GATE: t[GATE][:, :-1].contiguous()}), None, f"shape \\[{INTER}, {H - 1}\\]"),
        (lambda t: t.update({GATE: t[GATE].to(torch.int8)}), None, "not floating point"),
        (lambda t: t.update({"model.layers.1.self_attn.q_proj.weight": t[GATE].clone()}), None, "not an expert projection"),
        (None, lambda c: c["experts"].update({"9": [1]}), "layer 9 is not an MoE layer of the base"),
        (None, lambda c: c["experts"].update({"2": [16]}), "layer 2 expert 16: the base has 16 routed experts"),
        (None, lambda c: c.update({"shared_experts": True}), "shared_experts is true"),
        (None, lambda c: c["experts"].update({"1": [3, 3]}), "lists an expert twice"),
    ],
)  # fmt: skip
def test_an_adapter_that_does_not_fit_the_base_is_refused(tmp_path, edit_tensors, edit_config, message):
    with pytest.raises(AdapterError, match=message):
        load_esft(edited(tmp_path, edit_tensors, edit_config), SPEC)


def test_the_synth_command_writes_an_adapter_the_loader_accepts(tmp_path):
    moeweave = str(Path(sys.executable).with_name("moeweave"))
    output = subprocess.run(
        [moeweave, "adapters", "synth", str(tmp_path / "s"), "--fraction", "0.25", "--seed", "3"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    adapter = load_esft(tmp_path / "s", SPEC)
    assert adapter.selection == random_selection(SPEC, 0.25, 3)
    assert "24 of 96 routed experts (25.0%) in 6 layers" in output
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"experts": {"2": [1, 4]}}))
    subprocess.run([moeweave, "adapters", "synth", str(tmp_path / "c"), "--config", str(config)], check=True,
                   capture_output=True)  # fmt: skip
    assert load_esft(tmp_path / "c", SPEC).selection == {2: [1, 4]}
