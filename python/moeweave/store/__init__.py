"""The expert store: experts on SSD, each at its own bitwidth, read with O_DIRECT at disk speed.

``write_store`` converts a Hugging Face safetensors checkpoint; ``ExpertStore`` reads it back
expert by expert (io_uring, or a pread thread pool), straight into the packed format the MoE
kernels use. The on-disk format is in docs/formats.md and moeweave/store/manifest.py.
"""

from moeweave.store.buffers import aligned_empty
from moeweave.store.manifest import StoreError
from moeweave.store.reader import Expert, ExpertStore, ReadHandle
from moeweave.store.writer import write_store

__all__ = ["Expert", "ExpertStore", "ReadHandle", "StoreError", "aligned_empty", "write_store"]
