"""Nothing is read from outside the store or checkpoint directory the user named. A manifest whose
`files` or `dense_file` point elsewhere (absolute, `../`, a symlink leading out) is refused at
open, even when the file there would read fine; `write_store` copies only known configuration and
tokenizer files, never one that leads out of the checkpoint, so a symlinked secret stays out."""

import os
import re
import shutil

import pytest

from moeweave.store import ExpertStore, StoreError, write_store
from moeweave.store.writer import COPIED_FILES


@pytest.fixture(scope="module")
def written(hf_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("paths") / "store"
    write_store(hf_checkpoint("qwen3_moe"), out, bits=4, progress=False)
    return out


@pytest.fixture
def store_dir(written, tmp_path):
    return shutil.copytree(written, tmp_path / "store")


def moved_out(store_dir, name):
    """Moves store_dir/name beside the store (its bytes intact) and returns the new path."""
    target = store_dir.parent / os.path.basename(name)
    (store_dir / name).rename(target)
    return target


@pytest.mark.parametrize("field", ["files", "dense_file"])
@pytest.mark.parametrize("how", ["absolute", "../", "symlink"])
def test_manifest_paths_leading_out_are_refused(store_dir, field, how, edit_manifest):
    name = "experts/layer_0000.bin" if field == "files" else "dense.safetensors"
    outside = moved_out(store_dir, name)
    if how == "absolute":
        named = str(outside)
    elif how == "../":
        named = os.path.relpath(outside, store_dir)
    else:
        os.symlink(outside, store_dir / name)
        named = name
    index = f"{field}[0]" if field == "files" else field

    def point(manifest):
        if field == "files":
            manifest["files"][0] = named
        else:
            manifest["dense_file"] = named

    edit_manifest(store_dir, point)
    with pytest.raises(StoreError, match=rf"manifest.json: {re.escape(index)}: '.*' resolves to .*, outside"):
        ExpertStore(store_dir)


def test_system_files_are_not_opened(store_dir, edit_manifest):
    edit_manifest(store_dir, lambda m: m.update(dense_file="/etc/passwd"))
    with pytest.raises(StoreError, match=r"dense_file: '/etc/passwd' resolves to /etc/passwd, outside"):
        ExpertStore(store_dir)


def test_symlinked_manifest_leading_out_is_refused(store_dir):
    outside = moved_out(store_dir, "manifest.json")
    os.symlink(outside, store_dir / "manifest.json")
    with pytest.raises(StoreError, match=r"'manifest.json' resolves to .*, outside"):
        ExpertStore(store_dir)


def test_two_names_for_one_blob_are_refused(store_dir, edit_manifest):
    # Two names for one file would hide extents that overlap in it.
    edit_manifest(store_dir, lambda m: m["files"].__setitem__(1, "experts/../experts/layer_0000.bin"))
    with pytest.raises(StoreError, match=r"manifest.json: files\[1\] and files\[0\] are the same file"):
        ExpertStore(store_dir)


@pytest.fixture
def checkpoint_with_extras(hf_checkpoint, tmp_path):
    """A checkpoint directory with tokenizer files, files that must not travel (code, notes, a
    pickle, a directory) and a symlinked secret."""
    checkpoint = shutil.copytree(hf_checkpoint("qwen3_moe"), tmp_path / "checkpoint")
    (tmp_path / "secret.txt").write_text("password")
    os.symlink("../secret.txt", checkpoint / "secret.txt")
    for name, text in [("tokenizer.json", "{}"), ("merges.txt", "a b"), ("chat_template.jinja", "{{ x }}")]:
        (checkpoint / name).write_text(text)
    (checkpoint / "real").mkdir()
    (checkpoint / "real" / "tokenizer.model").write_bytes(b"\x00spm")
    os.symlink("real/tokenizer.model", checkpoint / "tokenizer.model")  # stays inside: followed
    (checkpoint / "modeling_qwen3_moe.py").write_text("import os")
    (checkpoint / "notes.txt").write_text("private")
    (checkpoint / "training_args.bin").write_bytes(b"pickle")
    return checkpoint


def test_only_known_files_come_along(checkpoint_with_extras, tmp_path):
    checkpoint = checkpoint_with_extras
    write_store(checkpoint, tmp_path / "store", progress=False)
    copied = {p.name for p in (tmp_path / "store").iterdir() if p.is_file()} - {
        "manifest.json",
        "dense.safetensors",
    }
    assert copied == {
        "config.json", "generation_config.json", "tokenizer.json", "merges.txt", "chat_template.jinja",
        "tokenizer.model",
    }  # fmt: skip
    assert copied <= set(COPIED_FILES)
    for name in copied:
        assert (tmp_path / "store" / name).read_bytes() == (checkpoint / name).read_bytes(), name
        assert not (tmp_path / "store" / name).is_symlink(), name
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert b"password" not in stored and b"private" not in stored


def test_known_file_symlinked_out_is_refused(checkpoint_with_extras, tmp_path):
    checkpoint = checkpoint_with_extras
    (checkpoint / "tokenizer.json").unlink()
    os.symlink("../secret.txt", checkpoint / "tokenizer.json")
    with pytest.raises(ValueError, match=r"'tokenizer.json' resolves to .*/secret.txt, outside"):
        write_store(checkpoint, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def hub_snapshot(checkpoint, cache):
    """The checkpoint laid out as the Hugging Face hub cache keeps it: every file of the
    snapshot a relative symlink into the repository's content-addressed blobs folder."""
    repository = cache / "models--org--tiny"
    snapshot = repository / "snapshots" / "0123abcd"
    (repository / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(checkpoint.iterdir())):
        shutil.copyfile(path, repository / "blobs" / f"blob{index}")
        os.symlink(f"../../blobs/blob{index}", snapshot / path.name)
    return snapshot


def test_hub_cache_snapshots_read_from_their_own_blobs(hf_checkpoint, tmp_path):
    import torch

    from moeweave.models import load

    source = hf_checkpoint("qwen3_moe")
    snapshot = hub_snapshot(source, tmp_path / "hub")
    write_store(snapshot, tmp_path / "store", bits=4, progress=False)
    assert (tmp_path / "store" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert not (tmp_path / "store" / "config.json").is_symlink()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(load(snapshot, experts="fp32")(ids).logits, load(source, experts="fp32")(ids).logits)

    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    shutil.copyfile(snapshot / "config.json", other / "config")
    (snapshot / "config.json").unlink()
    os.symlink(other / "config", snapshot / "config.json")
    with pytest.raises(ValueError, match="models--org--other/blobs/config, outside"):
        write_store(snapshot, tmp_path / "store2", bits=4, progress=False)
