"""Do expert reads come off the disk at the disk's speed? Cold random reads of expert-sized
extents (0.5-20 MiB) from a multi-GB file, in one run and in the same pattern (block-aligned
random offsets, the same block size and queue depth) for:

  io_uring (ours)      moeweave's native engine, io_uring backend, O_DIRECT, QD reads in flight
  pread pool (ours)    the same engine forced to its pread thread-pool fallback (QD threads)
  pread loop           one thread, one O_DIRECT pread after another (QD 1): the naive reader
  mmap + memcpy        page faults and readahead into a mapping, copied into a buffer
  fio                  fio's io_uring engine, O_DIRECT, the reference for the device's speed
  io_uring + crc32c    ours with every extent verified as the store verifies it, while the
                       following reads are in flight

The page cache is dropped before every run when /proc/sys/vm/drop_caches is writable (else only
the O_DIRECT figures are cold; mmap is then flagged warm). fio is installed from Debian if
missing. Methods alternate within each repetition, so drift on a shared machine hits all alike;
each figure is the median over the repetitions. Ratios are against fio (the device's limit,
measured in this run) and, for ours, against the single-thread pread loop: the median over
repetitions of the ratio within each repetition, which cancels the drift between repetitions.

    python bench/expert_io.py              # 4 GiB file, 0.5/2/8/20 MiB extents, QD 8 (a few minutes)
    python bench/expert_io.py --quick      # 2 and 20 MiB extents, 3 repetitions
"""

import argparse
import json
import mmap
import os
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from common import Report, Row

from moeweave import _native, envs
from moeweave.store import aligned_empty

MIB = 1 << 20
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def ensure_fio() -> str:
    if shutil.which("fio") is None:
        print("# fio missing: installing it with apt-get", flush=True)
        install = ["apt-get", "install", "-y", "-q", "fio"]
        if subprocess.run(install, capture_output=True).returncode != 0:  # stale package lists
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(install, check=True, capture_output=True)
    return shutil.which("fio")


def data_file(size: int) -> Path:
    """A file of `size` random bytes under MOEWEAVE_CACHE_DIR, written once and reused."""
    path = envs.cache_dir() / "bench" / f"expert_io_{size >> 30}g.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"# writing {size >> 30} GiB of random bytes to {path}", flush=True)
    chunk = np.random.default_rng(0).integers(0, 256, 64 * MIB, dtype=np.uint8)
    with open(path, "wb") as f:
        for i in range(size // (64 * MIB)):
            chunk[:8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)  # no two chunks alike
            f.write(chunk.tobytes())
        os.fsync(f.fileno())
    return path


def drop_caches() -> bool:
    if not os.access(DROP_CACHES, os.W_OK):
        return False
    os.sync()
    DROP_CACHES.write_text("3\n")
    return True


def offsets(file_size: int, block: int, total: int, seed: int) -> list[int]:
    """Distinct random block-aligned offsets covering `total` bytes (fio's randread pattern)."""
    slots = file_size // block
    count = min(slots, max(8, total // block))
    return [slot * block for slot in random.Random(seed).sample(range(slots), count)]


def run_engine(path: Path, backend: str, qd: int, block: int, plan: list[int], verify: bool) -> float:
    """Bytes/s of our engine keeping `qd` reads in flight, each into its own aligned buffer."""
    native = _native.require_cpu_module()
    buffers = [aligned_empty(block) for _ in range(qd)]
    with native.IoEngine(backend, qd) as engine:
        file = engine.open(str(path))
        start = time.perf_counter()
        in_flight = []  # (id, slot) in submission order
        position = 0
        for slot in range(min(qd, len(plan))):
            in_flight.append(
                (
                    engine.submit(file, plan[position], block, torch.utils.dlpack.to_dlpack(buffers[slot])),
                    slot,
                )
            )
            position += 1
        while in_flight:
            read_id, slot = in_flight.pop(0)
            result = engine.wait(read_id)[0]
            if result != block:
                raise RuntimeError(f"{path}: read of {block} bytes returned {result}")
            if verify:
                native.crc32c(buffers[slot].numpy())
            if position < len(plan):
                in_flight.append(
                    (
                        engine.submit(
                            file, plan[position], block, torch.utils.dlpack.to_dlpack(buffers[slot])
                        ),
                        slot,
                    )
                )
                position += 1
        return len(plan) * block / (time.perf_counter() - start)


def run_pread_loop(path: Path, block: int, plan: list[int]) -> float:
    buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        start = time.perf_counter()
        for offset in plan:
            if os.preadv(fd, [buffer], offset) != block:
                raise RuntimeError(f"{path}: short read at {offset}")
        return len(plan) * block / (time.perf_counter() - start)
    finally:
        os.close(fd)
        buffer.close()


def run_mmap(path: Path, block: int, plan: list[int]) -> float:
    out = np.empty(block, dtype=np.uint8)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        start = time.perf_counter()
        for offset in plan:
            np.copyto(out, np.frombuffer(mapped, np.uint8, block, offset))
        return len(plan) * block / (time.perf_counter() - start)


def run_fio(fio: str, path: Path, qd: int, block: int, total: int, seed: int) -> float:
    args = [
        fio, "--name=expert_io", f"--filename={path}", "--rw=randread", f"--bs={block}", f"--iodepth={qd}",
        "--ioengine=io_uring", "--direct=1", f"--io_size={total}", f"--randseed={seed}", "--norandommap",
        "--output-format=json",
    ]  # fmt: skip
    result = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(result.stdout)["jobs"][0]["read"]["bw_bytes"]


def crc_bytes_per_second(block: int) -> float:
    """CRC-32C speed over a buffer that was just written by a read (in DRAM, not in cache)."""
    native = _native.require_cpu_module()
    buffers = [
        np.random.default_rng(i).integers(0, 256, block, dtype=np.uint8)
        for i in range(max(2, 256 * MIB // block))
    ]
    start = time.perf_counter()
    for b in buffers:
        native.crc32c(b)
    return len(buffers) * block / (time.perf_counter() - start)


def paired(samples: dict, block: int, method: str, baseline: str) -> float:
    """Median over repetitions of method / baseline within the same repetition: the two ran
    minutes apart at most, so the disk's drift between repetitions cancels."""
    ratios = [a / b for a, b in zip(samples[(block, method)], samples[(block, baseline)], strict=True)]
    print(
        f"#   {block / MIB:g} MiB {method} / {baseline} per repetition: "
        + " ".join(f"{r:.2f}" for r in ratios)
    )
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--qd", type=int, default=8, help="queue depth of every method but the pread loop")
    args = parser.parse_args()
    file_size = 4 << 30
    blocks = [2 * MIB, 20 * MIB] if args.quick else [MIB // 2, 2 * MIB, 8 * MIB, 20 * MIB]
    repeats = 3 if args.quick else 5
    per_run = 1024 * MIB  # bytes read per method per repetition

    fio = ensure_fio()
    path = data_file(file_size)
    cold = drop_caches()
    if not cold:
        print("# /proc/sys/vm/drop_caches is not writable: O_DIRECT figures are cold, mmap's may be warm")
    uring = _native.require_cpu_module().io_uring_status()[0]
    methods = ["fio", "pread loop", "mmap + memcpy", "pread pool (ours)"]
    methods += ["io_uring (ours)", "io_uring + crc32c"] if uring else []

    samples: dict[tuple[int, str], list[float]] = {}
    for block in blocks:
        for rep in range(repeats):
            # Each method reads its own offsets (a host below the VM may cache what another
            # method just read), and the order rotates, so no method always goes first.
            order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
            for method in order:
                plan = offsets(
                    file_size, block, per_run, seed=(rep * 100 + methods.index(method)) * 1000003 + block
                )
                total = len(plan) * block
                drop_caches()
                if method == "fio":
                    speed = run_fio(fio, path, args.qd, block, total, seed=rep * 7919 + block)
                elif method == "pread loop":
                    speed = run_pread_loop(path, block, plan)
                elif method == "mmap + memcpy":
                    speed = run_mmap(path, block, plan)
                elif method == "pread pool (ours)":
                    speed = run_engine(path, "pread", args.qd, block, plan, verify=False)
                else:
                    speed = run_engine(path, "uring", args.qd, block, plan, verify=method.endswith("crc32c"))
                samples.setdefault((block, method), []).append(speed / 1e9)

    crc_gbps = crc_bytes_per_second(8 * MIB) / 1e9
    fio_best = max(statistics.median(samples[(b, "fio")]) for b in blocks)
    report = Report(__file__, {"fio GB/s (best block)": fio_best, "crc32c GB/s": crc_gbps})
    report.header()
    for block in blocks:
        median = {m: statistics.median(samples[(block, m)]) for m in methods}

        config = f"{block / MIB:g} MiB, QD {args.qd}{'' if cold else ', page cache warm'}"
        for method in methods:
            value = median[method]
            if method == "io_uring + crc32c":
                report.add(
                    Row(method, config, value, "GB/s", "io_uring (ours)", paired(samples, block, method, "io_uring (ours)"), value / median["fio"])
                )  # fmt: skip
                continue
            vs_fio = paired(samples, block, method, "fio") if method != "fio" else 1.0
            report.add(Row(method, config, value, "GB/s", "fio", vs_fio, value / median["fio"]))
            if method.endswith("(ours)"):
                report.add(
                    Row(method, config, value, "GB/s", "pread loop (QD 1)", paired(samples, block, method, "pread loop"), value / median["fio"])
                )  # fmt: skip
        # Serial cost of verification: what share of a read's time the checksum would add if it
        # did not overlap with the reads still in flight.
        share = median["fio"] / crc_gbps
        report.add(Row("crc32c / read time", config, share * 100, "%", "serial, at fio speed", share, None))
    report.finish()


if __name__ == "__main__":
    main()
