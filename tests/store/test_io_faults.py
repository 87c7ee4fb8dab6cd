"""The expert reader under hostile conditions: close() racing with readers on other threads,
io_uring refused by a seccomp filter at start (fall back to the pread pool) or later in the
completion thread (every pending and later read fails with the error; nothing hangs), and errors
that stay put on their handle. Oracles: the blob bytes read with plain file reads, errno."""

import errno
import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from moeweave.store import ExpertStore, StoreError, write_store

FAULTS_SCRIPT = Path(__file__).with_name("io_uring_faults.py")
JOIN_TIMEOUT_S = 60  # only a hang reaches it


@pytest.fixture(scope="module")
def store_dir(hf_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("io_faults") / "store"
    write_store(hf_checkpoint("mixtral"), out, bits={"default": 4, "0.1": 8}, progress=False)
    return out


@pytest.fixture(scope="module")
def blobs(store_dir) -> dict[tuple[int, int], bytes]:
    with ExpertStore(store_dir) as store:
        extents = {key: store.extent(*key) for key in store.experts()}
        files = store.manifest.files
    out = {}
    for key, extent in extents.items():
        with open(store_dir / files[extent.file], "rb") as f:
            f.seek(extent.offset)
            out[key] = f.read(extent.length)
    return out


def run_threads(targets) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"


def close_while_reading(store: ExpertStore, blobs: dict, seed: int, readers: int = 6) -> list:
    """Readers (demand reads, prefetches polled with done(), batches waited out of order) and,
    once every reader has read something, two closers at once. Returns what was raised other
    than "store closed"."""
    keys = sorted(blobs)
    have_read = threading.Semaphore(0)
    unexpected: list[BaseException] = []

    def read_some(rng: random.Random) -> dict:
        kind = rng.randrange(3)
        if kind == 0:
            key = rng.choice(keys)
            return {key: store.read(*key)}
        if kind == 1:
            handle = store.prefetch(*rng.choice(keys))
            while not handle.done():
                pass
            return {(handle.layer, handle.expert): handle.wait()}
        handles = [store.prefetch(*key) for key in rng.sample(keys, 4)]
        return {(h.layer, h.expert): h.wait() for h in reversed(handles)}

    def reader(rng: random.Random) -> None:
        reported = False
        try:
            while True:
                for key, expert in read_some(rng).items():
                    assert bytes(expert.buffer.numpy()) == blobs[key], key
                if not reported:
                    have_read.release()
                    reported = True
        except StoreError as error:
            if "store closed" not in str(error):
                unexpected.append(error)
        except BaseException as error:
            unexpected.append(error)
        finally:
            if not reported:
                have_read.release()

    def close_twice_at_once() -> None:
        for _ in range(readers):
            have_read.acquire()
        run_threads([store.close, store.close])

    run_threads([*(lambda i=i: reader(random.Random(seed + i)) for i in range(readers)), close_twice_at_once])
    return unexpected


def test_close_races_with_readers_on_other_threads(store_dir, blobs, backend):
    """Each read either returns the blob's bytes or raises "store closed"; nothing crashes or
    hangs, round after round."""
    for round_ in range(10):
        store = ExpertStore(store_dir, backend=backend, queue_depth=2)
        unexpected = close_while_reading(store, blobs, seed=round_ * 100)
        assert not unexpected, (round_, unexpected[:3])
        store.close()  # a third close, after the racing ones, is a no-op


def test_pending_reads_and_later_calls_fail_with_store_closed(store_dir, backend):
    store = ExpertStore(store_dir, backend=backend)
    with store.paused():
        handles = [store.prefetch(*key) for key in store.experts()]
        store.close()
    for handle in handles:
        for _ in range(2):
            with pytest.raises(
                StoreError, match=rf"layer {handle.layer} expert {handle.expert}: store closed"
            ):
                handle.wait()
        assert handle.done()
    for call in (
        lambda: store.read(0, 0),
        lambda: store.prefetch(0, 0),
        store.stats,
        store.dense_weights,
        lambda: store.backend,
    ):
        with pytest.raises(StoreError, match="store closed"):
            call()
    store.close()


def test_an_unexpected_failure_is_raised_by_every_wait(store_dir):
    """Errors other than StoreError/OSError (here, one from the checksum routine) used to be
    raised once, after which wait() returned None."""
    with ExpertStore(store_dir) as store:

        def broken_crc(data):
            raise RuntimeError("crc unit on fire")

        store._crc32c = broken_crc
        handle = store.prefetch(0, 0)
        for _ in range(3):
            with pytest.raises(RuntimeError, match="crc unit on fire"):
                handle.wait()


def run_faults(store_dir, mode: str, stdin: str = "") -> dict:
    result = subprocess.run(
        [sys.executable, str(FAULTS_SCRIPT), str(store_dir), mode],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=JOIN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.usefixtures("needs_uring")
def test_io_uring_enter_refused_at_start_falls_back_to_pread(store_dir, blobs):
    """io_uring_setup allowed but io_uring_enter refused, as some seccomp profiles do: the probe
    and the store's backend choice notice it and the pread pool serves every read."""
    report = run_faults(store_dir, "startup")
    assert report["probe"] == [False, errno.EPERM]
    assert report["backend"] == "pread" and report["fallback_errno"] == errno.EPERM
    assert report["reads"] == ["ok"] * len(blobs)
    assert report["forced_uring"] == errno.EPERM


@pytest.mark.usefixtures("needs_uring")
def test_a_dying_completion_thread_fails_every_pending_and_later_read(store_dir, blobs):
    """The completion thread's wait is refused after the store started on io_uring: at most the
    read already under way when it dies succeeds; every later read and every prefetch fails with
    EPERM instead of hanging, and close() returns."""
    report = run_faults(
        store_dir, "reaper", json.dumps({f"{layer}.{e}": b.hex() for (layer, e), b in blobs.items()})
    )
    assert report["before"] == "ok"
    assert report["reads"][0] in ("ok", errno.EPERM)
    assert report["reads"][1:] == [errno.EPERM] * (len(blobs) - 1)
    assert report["prefetches"] == [errno.EPERM] * len(blobs)
    assert report["closed"]
