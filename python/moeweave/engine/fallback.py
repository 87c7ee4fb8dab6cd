"""The low-bit fallback (EdgeMoE's and HOBBIT's trade of quality for stalls): a second copy of
every expert at fewer bits, kept in the store's `fallback/` directory, itself an expert store
whose dense weights are a hard link to the main store's. With the fallback on, an expert that a
step needs and nobody prefetched is read from the small copy instead of the full one: fewer
bytes on the critical path, at the quality cost bench/offload_decode.py reports. Off by default:
with it, outputs differ from the in-RAM model's.
"""

import contextlib
import os
from pathlib import Path

from moeweave.store.manifest import DENSE_FILE, MANIFEST, Manifest, StoreError
from moeweave.store.reader import ExpertStore
from moeweave.store.writer import write_store

DIRECTORY = "fallback"


def write_fallback(hf_dir: str | Path, store_dir: str | Path, bits: int, group_size: int = 64) -> Manifest:
    """Writes the `bits`-bit copy of checkpoint hf_dir's experts beside store_dir's (written from
    the same checkpoint)."""
    store_dir = Path(store_dir)
    target = store_dir / DIRECTORY
    manifest = write_store(hf_dir, target, bits=bits, group_size=group_size, sym=None)
    link = target / f".{DENSE_FILE}.link"
    with contextlib.suppress(OSError):  # a file system without hard links keeps the copy
        os.link(store_dir / DENSE_FILE, link)
        os.replace(link, target / DENSE_FILE)
    return manifest


def open_fallback(store: ExpertStore, backend: str | None) -> ExpertStore:
    """The low-bit copy beside `store`; it must hold the same experts of the same model."""
    path = store.path / DIRECTORY
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{path}: missing; the low-bit fallback needs a second copy of the experts "
            "(moeweave convert HF_DIR STORE --fallback-bits 2)"
        )
    fallback = ExpertStore(path, backend=backend)
    if fallback.config != store.config or fallback.experts() != store.experts():
        fallback.close()
        raise StoreError(f"{path}: holds other experts or another model than the store {store.path}")
    return fallback
