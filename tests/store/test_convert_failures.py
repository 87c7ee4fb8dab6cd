"""A failed conversion leaves nothing that blocks the next one: the store is written beside the
output directory and moved into place at the end, so a NaN found in the last expert or a Ctrl-C
half-way leaves no directory (or the user's empty one, still empty), and the same command then
succeeds. Bits maps of the wrong type get a ValueError naming the entry."""

import os
import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from moeweave.store import ExpertStore, write_store
from moeweave.store import writer as writer_module

LAST = "model.layers.1.mlp.experts.3.down_proj.weight"  # read last of all the experts


@pytest.fixture
def checkpoint(hf_checkpoint, tmp_path):
    return shutil.copytree(hf_checkpoint("qwen3_moe"), tmp_path / "checkpoint")


def entries(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("made_by_user", [False, True])
def test_a_late_failure_leaves_nothing_and_the_rerun_succeeds(checkpoint, tmp_path, made_by_user):
    out = tmp_path / "out" / "store"
    if made_by_user:
        out.mkdir(parents=True)
        out.chmod(0o750)
    tensors = load_file(checkpoint / "model.safetensors")
    good = tensors[LAST].clone()
    tensors[LAST][0, 0] = float("nan")
    save_file(tensors, checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"{LAST}: non-finite value nan at [0, 0]")):
        write_store(checkpoint, out, progress=False)
    assert entries(tmp_path / "out") == (["store"] if made_by_user else [])
    if made_by_user:
        assert entries(out) == []

    tensors[LAST] = good
    save_file(tensors, checkpoint / "model.safetensors")
    write_store(checkpoint, out, progress=False)
    assert entries(tmp_path / "out") == ["store"]
    if made_by_user:
        assert out.stat().st_mode & 0o777 == 0o750
    with ExpertStore(out) as store:
        assert len(store.experts()) == 8


@pytest.mark.parametrize("made_by_user", [False, True])
def test_an_interrupt_leaves_nothing(checkpoint, tmp_path, monkeypatch, made_by_user):
    out = tmp_path / "out" / "store"
    if made_by_user:
        out.mkdir(parents=True)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # half-way: the first blob written, the second begun
            raise KeyboardInterrupt
        return quantize(*args, **kwargs)

    quantize = writer_module.quantize
    monkeypatch.setattr(writer_module, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_store(checkpoint, out, progress=False)
    assert entries(tmp_path / "out") == (["store"] if made_by_user else [])
    if made_by_user:
        assert entries(out) == []
    monkeypatch.undo()
    write_store(checkpoint, out, progress=False)
    with ExpertStore(out) as store:
        store.read(1, 3)


def test_a_full_output_directory_is_refused_untouched(checkpoint, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="out: not empty; write_store needs a new or empty directory"):
        write_store(checkpoint, tmp_path / "out", progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="file: not a directory"):
        write_store(checkpoint, tmp_path / "file", progress=False)
    assert entries(tmp_path / "out") == ["mine.txt"]
    assert entries(tmp_path) == ["checkpoint", "file", "out"]


ALLOWED = r"\(2, 3, 4, 8, 16\)"


@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (
            True,
            rf"^bits must be a width {ALLOWED}, a map \{{'layer.expert': width\}} or a JSON file of one, got True$",
        ),
        (4.0, r"^bits must be a width .* got 4.0$"),
        ([4], r"^bits must be a width .* got \[4\]$"),
        ({"0.1": "4"}, rf"^bits map: '0.1' = '4'; each width must be one of {ALLOWED} \(an integer\)$"),
        ({"0.1": 4.0}, r"^bits map: '0.1' = 4.0; each width must be one of"),
        ({"default": True}, r"^bits map: 'default' = True; each width must be one of"),
        ({"0.1": None}, r"^bits map: '0.1' = None; each width must be one of"),
        ({0: 4}, r"^bits map: key 0 is not a string; keys are 'layer.expert' or 'default'$"),
        ("list.json", r'bits map .*list.json: must be a JSON object \{"layer.expert": bits\}, not a list$'),
        ("string.json", r"bits map .*string.json: '1.1' = '8'; each width must be one of"),
        ("broken.json", r"bits map .*broken.json: not a UTF-8 JSON file \(Extra data"),
    ],
)
def test_bits_of_the_wrong_type_are_refused(checkpoint, tmp_path, bits, message):
    files = {"list.json": "[4, 8]", "string.json": '{"1.1": "8"}', "broken.json": "4 bits"}
    if isinstance(bits, str):
        (tmp_path / bits).write_text(files[bits])
        bits = tmp_path / bits
    with pytest.raises(ValueError, match=message):
        write_store(checkpoint, tmp_path / "out", bits=bits, progress=False)
    assert not os.path.exists(tmp_path / "out")
