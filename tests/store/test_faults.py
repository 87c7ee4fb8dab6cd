"""Fault injection: a corrupt extent, a truncated blob, a newer or malformed manifest, a missing
or misaligned file, and checkpoints the writer must refuse. Each error names the file and, where
one is involved, the layer and expert; the store keeps serving every other expert."""

import json
import re
import shutil

import pytest
import torch

from moeweave.store import ExpertStore, StoreError, write_store


@pytest.fixture
def store_dir(hf_checkpoint, tmp_path):
    write_store(hf_checkpoint("qwen3_moe"), tmp_path / "store", bits=4, progress=False)
    return tmp_path / "store"


def test_corrupt_extent_fails_its_checksum_only(store_dir):
    # One reader thread: reads of one priority finish in the order they were submitted.
    with ExpertStore(store_dir, backend="pread", queue_depth=1) as store:
        extent = store.extent(1, 2)
        good = store.read(1, 2).buffer.clone()
        blob = store_dir / store.manifest.files[extent.file]
        with open(blob, "r+b") as f:  # flip one bit in the middle of the extent
            f.seek(extent.offset + extent.length // 2)
            byte = f.read(1)[0]
            f.seek(-1, 1)
            f.write(bytes([byte ^ 0x10]))
        with pytest.raises(StoreError, match=re.escape(f"{blob}: layer 1 expert 2: checksum mismatch")):
            store.read(1, 2)
        handle = store.prefetch(1, 2, priority="demand")
        store.read(0, 0)  # submitted after it, so done after it
        assert handle.done()
        for _ in range(2):  # the handle keeps its error
            with pytest.raises(StoreError, match="checksum mismatch"):
                handle.wait()
        for layer, e in store.experts():  # every other expert still reads and verifies
            if (layer, e) != (1, 2):
                store.read(layer, e)
    with ExpertStore(store_dir, verify=False) as store:  # unverified, the damage gets through
        damaged = store.read(1, 2).buffer
        assert int((damaged != good).sum()) == 1


def test_truncated_blob_names_the_cut_expert(store_dir):
    with ExpertStore(store_dir) as store:
        last = store.extent(1, 3)
        blob = store_dir / store.manifest.files[last.file]
    for size in (last.offset + last.length - 4096, last.offset + 100):  # on and off a block boundary
        with open(blob, "r+b") as f:
            f.truncate(size)
        with ExpertStore(store_dir) as store:
            with pytest.raises(StoreError, match=re.escape(f"{blob}: layer 1 expert 3: truncated blob")):
                store.read(1, 3)
            assert store.read(1, 2).gate.bits == 4
            assert store.read(0, 3).gate.bits == 4


def test_newer_major_version_is_refused_and_newer_minor_accepted(store_dir, edit_manifest):
    def newer_minor(manifest):  # a newer minor version may add fields anywhere
        manifest["version"]["minor"] = 7
        manifest["compression"] = None
        manifest["experts"][0]["projections"]["gate"]["outlier_count"] = 0
        manifest["experts"][0]["projections"]["gate"]["parts"]["packed"]["stride"] = 0

    edit_manifest(store_dir, newer_minor)
    with ExpertStore(store_dir) as store:
        assert store.manifest.version == (1, 7)
        store.read(0, 0)
    edit_manifest(store_dir, lambda m: m["version"].update(major=2))
    with pytest.raises(StoreError, match=r"manifest.json: store version 2.7 is newer than this reader's 1.1"):
        ExpertStore(store_dir)


def test_missing_blob_names_file_and_experts(store_dir):
    (store_dir / "experts" / "layer_0001.bin").unlink()
    with pytest.raises(StoreError, match=r"layer_0001.bin: missing .* holds 4 experts \(layer 1 expert 0"):
        ExpertStore(store_dir)


def test_misaligned_extent_is_refused(store_dir, edit_manifest):
    edit_manifest(store_dir, lambda m: m["experts"][5].update(offset=m["experts"][5]["offset"] + 512))
    with pytest.raises(
        StoreError,
        match=r"manifest.json: layer 1 expert 1: offset is \d+, expected an integer >= 0, a multiple of 4096",
    ):
        ExpertStore(store_dir)


def test_malformed_manifests_are_refused(store_dir, tmp_path, edit_manifest):
    with pytest.raises(StoreError, match=r"manifest\.json: missing"):
        ExpertStore(tmp_path)
    edit_manifest(store_dir, lambda m: m["experts"][0].pop("crc32c"))
    with pytest.raises(StoreError, match=r"manifest.json: layer 0 expert 0: crc32c is missing"):
        ExpertStore(store_dir)


def test_writer_refuses_pickles_unknown_layouts_and_bad_maps(hf_checkpoint, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"only pickle weights \(pytorch_model.bin\); moeweave never unpickles"
    ):
        write_store(pickled, tmp_path / "out1", progress=False)

    source = hf_checkpoint("qwen3_moe")
    with pytest.raises(ValueError, match=r"\['9.9'\] name no expert"):
        write_store(source, tmp_path / "out2", bits={"9.9": 4, "default": 4}, progress=False)
    with pytest.raises(ValueError, match=r"no width for expert '0.0' and no 'default'"):
        write_store(source, tmp_path / "out3", bits={"0.1": 4}, progress=False)
    with pytest.raises(ValueError, match=r"'0.1' = 5; each width must be one of"):
        write_store(source, tmp_path / "out4", bits={"0.1": 5}, progress=False)
    write_store(source, tmp_path / "out5", bits=4, progress=False)
    with pytest.raises(FileExistsError, match="not empty"):
        write_store(source, tmp_path / "out5", bits=4, progress=False)

    from safetensors.torch import load_file, save_file

    fp8_like = tmp_path / "fp8"
    fp8_like.mkdir()
    (fp8_like / "config.json").write_bytes((source / "config.json").read_bytes())
    tensors = load_file(source / "model.safetensors")
    tensors["model.layers.0.mlp.experts.0.gate_proj.weight_scale_inv"] = torch.ones(1, 1)
    save_file(tensors, fp8_like / "model.safetensors")
    with pytest.raises(ValueError, match=r"weight_scale_inv' looks like an expert weight of a layout"):
        write_store(fp8_like, tmp_path / "out6", progress=False)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"moe_intermediate_size": 32}, "layer 0 expert 0 gate weight has shape [48, 64], but config.json "
         "(hidden_size 64, moe_intermediate_size 32) makes it [32, 64]"),
        ({"model_type": "llama"}, "model_type 'llama' is not an architecture the store knows"),
        ({"moe_intermediate_size": None}, "config moe_intermediate_size is None, expected a positive integer"),
    ],
)  # fmt: skip
def test_writer_refuses_a_config_that_contradicts_the_weights(hf_checkpoint, tmp_path, edit, message):
    # Such a store would be refused by every reader: the writer says so before any work.
    source = shutil.copytree(hf_checkpoint("qwen3_moe"), tmp_path / "checkpoint")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match=re.escape(message)):
        write_store(source, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()
