"""The read paths: io_uring and the pread pool return the bytes the blob holds (read back with
plain Python file reads); hundreds of reads in flight at once, waited in any order; cancellation
of queued prefetches; reads into a caller's buffer; the fallback forced by MOEWEAVE_IO in a fresh
process; the io engine's own contract; CRC-32C against a bitwise reference."""

import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from moeweave import _native
from moeweave.store import ExpertStore, StoreError, aligned_empty, write_store


@pytest.fixture(scope="module")
def store_dir(hf_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("reads") / "store"
    write_store(hf_checkpoint("mixtral"), out, bits={"default": 4, "0.1": 8, "1.2": 16}, progress=False)
    return out


def file_bytes(store_dir, store, layer, expert) -> bytes:
    extent = store.extent(layer, expert)
    with open(store_dir / store.manifest.files[extent.file], "rb") as f:
        f.seek(extent.offset)
        return f.read(extent.length)


def test_backends_return_the_blob_bytes(store_dir, backend):
    with ExpertStore(store_dir, backend=backend) as store:
        assert store.backend == {"uring": "io_uring", "pread": "pread"}[backend]
        for layer, e in store.experts():
            got = store.read(layer, e).buffer
            assert got.data_ptr() % 4096 == 0
            assert bytes(got.numpy()) == file_bytes(store_dir, store, layer, e), (layer, e)


def test_hundreds_of_concurrent_reads(store_dir, backend):
    rng = random.Random(0)
    with ExpertStore(store_dir, backend=backend, queue_depth=16) as store:
        want = {key: file_bytes(store_dir, store, *key) for key in store.experts()}
        keys = [rng.choice(store.experts()) for _ in range(400)]
        handles = [store.prefetch(*key, priority=rng.choice(["demand", "prefetch"])) for key in keys]
        order = list(range(len(handles)))
        rng.shuffle(order)
        for i in order:
            expert = handles[i].wait()
            assert (expert.layer, expert.expert) == keys[i]
            assert bytes(expert.buffer.numpy()) == want[keys[i]]
        stats = store.stats()
    assert stats["requests_completed"] == 400 and stats["requests_failed"] == 0
    assert stats["bytes_completed"] == sum(len(want[key]) for key in keys)
    assert 1 <= stats["in_flight_max"] <= 16 and stats["latency_ns_mean"] > 0
    assert stats["in_flight"] == 0 and stats["queued"] == 0


def test_reads_from_many_threads(store_dir, backend):
    with ExpertStore(store_dir, backend=backend, queue_depth=4) as store:
        want = {key: file_bytes(store_dir, store, *key) for key in store.experts()}

        def worker(seed: int) -> int:
            rng = random.Random(seed)
            for _ in range(50):
                key = rng.choice(store.experts())
                assert bytes(store.read(*key).buffer.numpy()) == want[key], key
            return 50

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(worker, range(8))) == 400
        assert store.stats()["requests_completed"] == 400


def test_default_backend_is_io_uring_where_the_kernel_allows(store_dir, uring_works):
    with ExpertStore(store_dir) as store:
        assert store.backend == ("io_uring" if uring_works else "pread")


def test_queued_prefetches_cancel_and_demand_reads_overtake(store_dir, backend):
    """Held paused, the reader queues 200 prefetches and a demand read; every other prefetch is
    cancelled. On resume the demand read is issued first, then the kept prefetches in order."""
    with ExpertStore(store_dir, backend=backend, queue_depth=1) as store:
        with store.paused():
            prefetches = [store.prefetch(*store.experts()[i % 8]) for i in range(200)]
            demand = store.prefetch(1, 1, priority="demand")
            cancelled, kept = prefetches[::2], prefetches[1::2]
            assert all(h.cancel() for h in cancelled)
        assert bytes(demand.wait().buffer.numpy()) == file_bytes(store_dir, store, 1, 1)
        assert demand.issue_index == 1
        for h in kept:
            assert bytes(h.wait().buffer.numpy()) == file_bytes(store_dir, store, h.layer, h.expert)
            assert h.done() and h.latency_ns > 0
        assert [h.issue_index for h in kept] == list(range(2, 2 + len(kept)))
        for h in cancelled:
            assert h.done() and h.issue_index is None
            with pytest.raises(
                StoreError, match=f"layer {h.layer} expert {h.expert}: the read was cancelled"
            ):
                h.wait()
        stats = store.stats()
        assert stats["requests_cancelled"] == len(cancelled)
        assert stats["requests_completed"] == len(kept) + 1


def test_cancel_racing_the_reader_loses_nothing(store_dir, backend):
    """Unpaused, how many prefetches are still cancellable depends on the machine; what must hold
    is that each one either raises "cancelled" or returns its bytes, and the counters agree."""
    with ExpertStore(store_dir, backend=backend, queue_depth=1) as store:
        prefetches = [store.prefetch(*store.experts()[i % 8]) for i in range(200)]
        cancelled = {id(h) for h in prefetches if h.cancel()}
        for h in prefetches:
            if id(h) in cancelled:
                with pytest.raises(StoreError, match="the read was cancelled"):
                    h.wait()
            else:
                assert bytes(h.wait().buffer.numpy()) == file_bytes(store_dir, store, h.layer, h.expert)
        stats = store.stats()
        assert stats["requests_cancelled"] == len(cancelled)
        assert stats["requests_completed"] == 200 - len(cancelled)
        assert stats["queued"] == 0 and stats["in_flight"] == 0


def test_promoted_prefetch_overtakes_the_queue(store_dir, backend):
    with ExpertStore(store_dir, backend=backend, queue_depth=1) as store:
        with store.paused():
            prefetches = [store.prefetch(*store.experts()[i % 8]) for i in range(200)]
            prefetches[-1].promote()
            prefetches[100].promote()
        for h in prefetches:
            assert bytes(h.wait().buffer.numpy()) == file_bytes(store_dir, store, h.layer, h.expert)
        # Promoted reads first (in submission order among themselves), then the rest in order.
        order = [prefetches[100], prefetches[-1], *prefetches[:100], *prefetches[101:-1]]
        assert [h.issue_index for h in order] == list(range(1, 201))


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_store_on_tmpfs_reads_the_same(store_dir):
    """tmpfs refused O_DIRECT before Linux 6.6 (the engine then opens files buffered); on newer
    kernels this is one more filesystem with O_DIRECT."""
    copy = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        shutil.copytree(store_dir, copy / "store")
        with ExpertStore(copy / "store") as store, ExpertStore(store_dir) as original:
            for key in store.experts():
                assert torch.equal(store.read(*key).buffer, original.read(*key).buffer), key
    finally:
        shutil.rmtree(copy)


def test_read_into_a_caller_buffer_is_zero_copy(store_dir):
    with ExpertStore(store_dir) as store:
        slab = aligned_empty(4 * 65536)  # an expert cache's slab: slot i at i * 64 KiB
        expert = store.read(0, 1, into=slab[65536:])
        assert expert.buffer.data_ptr() == slab.data_ptr() + 65536
        assert expert.gate.bits == 8
        packed = expert.gate.packed
        assert slab.data_ptr() <= packed.data_ptr() < slab.data_ptr() + slab.numel()
        assert bytes(slab[65536 : 65536 + store.extent(0, 1).length].numpy()) == file_bytes(
            store_dir, store, 0, 1
        )
        with pytest.raises(ValueError, match="not a multiple of 4096"):
            store.read(0, 1, into=slab[100:])


def test_fallback_forced_by_environment(store_dir):
    code = (
        "import sys, hashlib; from moeweave.store import ExpertStore\n"
        "s = ExpertStore(sys.argv[1])\n"
        "print(s.backend, hashlib.sha256(bytes(s.read(1, 2).buffer.numpy())).hexdigest())\n"
    )
    env = {**os.environ, "MOEWEAVE_IO": "pread"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(store_dir)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    backend, digest = result.stdout.split()
    assert backend == "pread"
    import hashlib

    with ExpertStore(store_dir) as store:
        assert digest == hashlib.sha256(file_bytes(store_dir, store, 1, 2)).hexdigest()
    env["MOEWEAVE_IO"] = "bogus"
    result = subprocess.run(
        [sys.executable, "-c", code, str(store_dir)], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "MOEWEAVE_IO must be auto, uring or pread, got 'bogus'" in result.stderr


def test_io_engine_contract(tmp_path):
    native = _native.require_cpu_module()
    path = tmp_path / "blob"
    data = os.urandom(3 * 4096)
    path.write_bytes(data)
    buffer = aligned_empty(3 * 4096)
    with native.IoEngine("pread", 2) as engine:
        with pytest.raises(FileNotFoundError):
            engine.open(str(tmp_path / "absent"))
        file = engine.open(str(path))
        read_id = engine.submit(file, 4096, 8192, torch.utils.dlpack.to_dlpack(buffer))
        assert engine.wait(read_id)[0] == 8192
        assert bytes(buffer[:8192].numpy()) == data[4096:]
        with pytest.raises(KeyError):
            engine.wait(read_id)  # consumed
        with pytest.raises(ValueError, match="not a multiple of 4096"):
            engine.submit(file, 100, 4096, torch.utils.dlpack.to_dlpack(buffer))
        with pytest.raises(ValueError, match="holds 4096 bytes, fewer than the read's 8192"):
            engine.submit(file, 0, 8192, torch.utils.dlpack.to_dlpack(buffer[:4096]))
        with pytest.raises(ValueError, match="priority must be 'demand' or 'prefetch'"):
            engine.submit(file, 0, 4096, torch.utils.dlpack.to_dlpack(buffer), "urgent")
    with pytest.raises(ValueError, match="IoEngine is closed"):
        engine.open(str(path))
    with pytest.raises(ValueError, match="backend must be 'auto', 'uring' or 'pread'"):
        native.IoEngine("aio", 2)
    with pytest.raises(ValueError, match=r"queue_depth must be in \[1, 4096\]"):
        native.IoEngine("pread", 0)


def crc32c_bitwise(data: bytes) -> int:
    """The CRC-32C definition, one bit at a time (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_matches_bitwise_reference(isa):
    """Under each ISA level (tests/conftest.py): scalar runs the tables, the others SSE4.2."""
    native = _native.require_cpu_module()
    rng = random.Random(3)
    assert native.crc32c(b"123456789") == 0xE3069283
    for length in (0, 1, 7, 100, 4096, 3 * 8192 + 5, 50000):
        data = rng.randbytes(length)
        assert native.crc32c(data) == crc32c_bitwise(data), length
        head = native.crc32c(data[: length // 3])
        assert native.crc32c(data[length // 3 :], head) == crc32c_bitwise(data), length


def test_cli_converts_with_a_bits_map(hf_checkpoint, tmp_path):
    map_path = tmp_path / "bits.json"
    map_path.write_text('{"0.0": 2, "1.3": 8}')
    cli = os.path.join(os.path.dirname(sys.executable), "moeweave")
    args = [cli, "convert", str(hf_checkpoint("olmoe")), str(tmp_path / "store"), "--bits", "3"]
    result = subprocess.run([*args, "--bits-map", str(map_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "# 8 experts, 64.0 KiB in 2 blob files" in result.stdout
    assert "#     0     1     3     0" in result.stdout  # layer 0: one int2, three int3
    with ExpertStore(tmp_path / "store") as store:
        bits = {key: store.read(*key).down.bits for key in store.experts()}
    assert bits == {key: {(0, 0): 2, (1, 3): 8}.get(key, 3) for key in bits}
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 1 and "not empty" in again.stderr
