"""Reading an expert store: ``ExpertStore`` opens and checks the manifest, reads each expert with
one O_DIRECT read of its extent through the native io engine (io_uring, or the pread pool where
io_uring is refused; MOEWEAVE_IO picks), verifies its CRC-32C, and returns its projections as
views into the read buffer, in the format the MoE kernels consume (no copy).

A failed read (checksum mismatch, truncated blob, io error) raises for that expert only; the
store stays usable for every other expert. close() may be called from any thread while others
read: their pending reads and every later call raise StoreError "store closed".
"""

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from moeweave import _native, envs
from moeweave.quant.experts import Projection
from moeweave.quant.format import TILE_ROWS, UNIT_COLS, QuantizedWeight, padded, unit_bytes
from moeweave.store.buffers import aligned_empty, part_view
from moeweave.store.manifest import DTYPES, PROJECTIONS, Extent, Manifest, StoreError, load_manifest


@dataclass
class Expert:
    """One expert as read: gate [I, H], up [I, H], down [H, I] (QuantizedWeight, or bfloat16 when
    stored unquantised), GPT-OSS biases {gate [I], up [I], down [H]} (else empty), and the extent
    buffer every tensor is a view of."""

    layer: int
    expert: int
    gate: Projection
    up: Projection
    down: Projection
    biases: dict[str, torch.Tensor]
    buffer: torch.Tensor

    @property
    def projections(self) -> tuple[Projection, Projection, Projection]:
        """(gate, up, down): one row of moeweave.quant.ExpertTable."""
        return (self.gate, self.up, self.down)


class ReadHandle:
    """A read in progress. wait() returns the Expert (or raises for this expert only, the same
    error on every call)."""

    def __init__(self, store: "ExpertStore", extent: Extent, buffer: torch.Tensor, read_id: int):
        self._store, self._extent, self._buffer, self._id = store, extent, buffer, read_id
        self._result: Expert | None = None
        self._error: Exception | None = None  # why the read failed, raised by every wait()
        self.latency_ns: int | None = None  # submission to completion, once done
        # The read was the n-th one the io engine issued (1-based), once done: the order the
        # scheduler chose (priorities, promotions). None when it was never issued.
        self.issue_index: int | None = None

    @property
    def layer(self) -> int:
        return self._extent.layer

    @property
    def expert(self) -> int:
        return self._extent.expert

    @property
    def nbytes(self) -> int:
        """The bytes read: the extent's length."""
        return self._extent.length

    def done(self) -> bool:
        """True once wait() would not block."""
        if self._id is None:
            return True
        completion = self._engine_call(self._store._engine.peek)
        if completion is not None:
            self._complete(*completion)
        return completion is not None

    def wait(self) -> Expert:
        if self._id is not None:
            self._complete(*self._engine_call(self._store._engine.wait))
        if self._error is not None:
            raise self._error
        return self._result

    def _engine_call(self, method):
        """method(read id); a store closed meanwhile fails this read for good."""
        try:
            return method(self._id)
        except self._store._closed_error:
            self._fail(StoreError(f"{self._store._where(self._extent)}: store closed"))
            raise self._error from None

    def _fail(self, error: Exception) -> None:
        self._store._in_flight.pop(self._id, None)
        self._id, self._error = None, error

    def _complete(self, result: int, latency_ns: int, issue_index: int) -> None:
        read_id, self._id = self._id, None
        self.latency_ns, self.issue_index = latency_ns, issue_index or None
        try:
            self._result = self._store._finish(read_id, self._extent, self._buffer, result)
        except Exception as error:  # kept, so every wait() raises it, not only the first
            self._error = error

    def cancel(self) -> bool:
        """Drops the read if it is still queued (a stale prefetch); False once it is in flight."""
        if self._id is None or not self._engine_call(self._store._engine.cancel):
            return False
        self._engine_call(self._store._engine.wait)  # consume the cancelled completion
        self._fail(StoreError(f"{self._store._where(self._extent)}: the read was cancelled"))
        return True

    def promote(self) -> None:
        """The model now needs this expert: move it ahead of the queued prefetches."""
        if self._id is not None:
            self._engine_call(self._store._engine.promote)


class ExpertStore:
    """An expert store opened for reading (a directory written by write_store)."""

    def __init__(
        self, path: str | Path, verify: bool = True, backend: str | None = None, queue_depth: int = 8
    ):
        self.path = Path(path)
        self.verify = verify
        self.manifest: Manifest = load_manifest(self.path)
        self._extents = {(e.layer, e.expert): e for e in self.manifest.extents}
        module = _native.require_cpu_module()
        self._crc32c = module.crc32c
        self._closed_error = module.IoEngineClosed
        self._engine = module.IoEngine(backend or envs.io_backend(), queue_depth)
        try:
            self._files = [self._engine.open(str(self.path / name)) for name in self.manifest.files]
        except OSError:
            self._engine.close()
            raise
        # Buffers of reads not yet waited for: the kernel may still write into them, so they must
        # outlive a handle that is dropped unwaited.
        self._in_flight: dict[int, torch.Tensor] = {}

    def __enter__(self) -> "ExpertStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Cancels queued reads, waits for those in flight and releases the files. Safe to call
        twice and while other threads read: their pending reads, and every later call, raise
        StoreError "store closed"."""
        self._engine.close()
        self._in_flight.clear()

    def _closed(self) -> StoreError:
        return StoreError(f"{self.path}: store closed")

    @contextlib.contextmanager
    def _open_engine(self) -> Iterator:
        """The io engine, for one call that must fail with "store closed" once close() began."""
        try:
            yield self._engine
        except self._closed_error:
            raise self._closed() from None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Reads submitted inside are queued, not issued, until the block ends; then they go in
        priority order (demand reads and promoted prefetches first). Reads already in flight
        finish meanwhile. Waiting inside the block for a read submitted inside it never returns."""
        with self._open_engine() as engine:
            engine.pause(True)
        try:
            yield
        finally:
            with contextlib.suppress(self._closed_error):  # closed meanwhile: nothing to resume
                self._engine.pause(False)

    @property
    def config(self) -> dict:
        return self.manifest.config

    @property
    def backend(self) -> str:
        """The io backend in use: io_uring or pread."""
        with self._open_engine() as engine:
            return engine.backend

    def experts(self) -> list[tuple[int, int]]:
        """Every stored (layer, expert), sorted."""
        return sorted(self._extents)

    def extent(self, layer: int, expert: int) -> Extent:
        try:
            return self._extents[(layer, expert)]
        except KeyError:
            raise KeyError(f"{self.path}: no layer {layer} expert {expert} in this store") from None

    def prefetch(
        self, layer: int, expert: int, into: torch.Tensor | None = None, priority: str = "prefetch"
    ) -> ReadHandle:
        """Starts reading one expert. `into`: a caller's 4 KiB-aligned uint8 buffer of at least
        extent(layer, expert).length bytes (e.g. an expert cache slot); by default a new one."""
        extent = self.extent(layer, expert)
        buffer = aligned_empty(extent.length) if into is None else into[: extent.length]
        with self._open_engine() as engine:
            read_id = engine.submit(
                self._files[extent.file],
                extent.offset,
                extent.length,
                torch.utils.dlpack.to_dlpack(buffer),
                priority,
            )
        self._in_flight[read_id] = buffer
        return ReadHandle(self, extent, buffer, read_id)

    def read(self, layer: int, expert: int, into: torch.Tensor | None = None) -> Expert:
        """Reads one expert now (a demand read: ahead of queued prefetches)."""
        return self.prefetch(layer, expert, into, priority="demand").wait()

    def dense_weights(self) -> dict[str, torch.Tensor]:
        """The non-expert weights, by their checkpoint names."""
        if self._engine.closed:
            raise self._closed()
        return load_file(self.path / self.manifest.dense_file)

    def stats(self) -> dict:
        """The io engine's counters: requests and bytes completed, latency, queue occupancy."""
        with self._open_engine() as engine:
            return engine.stats()

    def _where(self, extent: Extent) -> str:
        return f"{self.path / self.manifest.files[extent.file]}: layer {extent.layer} expert {extent.expert}"

    def _finish(self, read_id: int, extent: Extent, buffer: torch.Tensor, result: int) -> Expert:
        self._in_flight.pop(read_id, None)
        where = self._where(extent)
        if result == -errno.ECANCELED:
            raise StoreError(
                f"{where}: store closed" if self._engine.closed else f"{where}: the read was cancelled"
            )
        if result < 0:
            raise OSError(-result, f"{where}: read failed: {errno.errorcode.get(-result, -result)}")
        if result < extent.length:
            raise StoreError(
                f"{where}: truncated blob: the extent is bytes [{extent.offset}, {extent.offset + extent.length}) "
                f"but the file ends at {extent.offset + result}"
            )
        if self.verify:
            crc = self._crc32c(buffer.numpy())
            if crc != extent.crc32c:
                raise StoreError(
                    f"{where}: checksum mismatch (CRC-32C of the {extent.length}-byte extent at offset "
                    f"{extent.offset} is {crc:#010x}, the manifest says {extent.crc32c:#010x}); the blob is corrupt"
                )
        try:
            projections = {name: _projection(buffer, extent.projections[name]) for name in PROJECTIONS}
            biases = {
                name: part_view(buffer, b.part, DTYPES[b.dtype], b.shape) for name, b in extent.biases.items()
            }
        except (RuntimeError, ValueError, KeyError) as error:
            raise StoreError(f"{where}: manifest entry does not match its bytes ({error})") from None
        return Expert(extent.layer, extent.expert, **projections, biases=biases, buffer=buffer)


def _projection(buffer: torch.Tensor, entry) -> Projection:
    n, k = entry.shape
    if entry.format == "bf16":
        return part_view(buffer, entry.parts["weight"], torch.bfloat16, [n, k])
    if entry.format != "quant":
        raise ValueError(f"unknown projection format {entry.format!r}")
    tiles, padded_k = padded(n, TILE_ROWS) // TILE_ROWS, padded(k, entry.group_size)
    scale_dtype = DTYPES[entry.scale_dtype]
    group_shape = [tiles, padded_k // entry.group_size, TILE_ROWS]
    zeros = entry.parts.get("zeros")
    return QuantizedWeight(
        packed=part_view(
            buffer, entry.parts["packed"], torch.uint8, [tiles, padded_k // UNIT_COLS, unit_bytes(entry.bits)]
        ),
        scales=part_view(buffer, entry.parts["scales"], scale_dtype, group_shape),
        zeros=None if zeros is None else part_view(buffer, zeros, scale_dtype, group_shape),
        n=n,
        k=k,
        bits=entry.bits,
        group_size=entry.group_size,
    )
