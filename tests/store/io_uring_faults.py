"""Run as a script by test_io_faults.py: makes the kernel refuse io_uring_enter in this process
with a seccomp filter (as container profiles do), then exercises the expert store and prints what
happened as JSON. A filter cannot be removed, hence a process of its own.

    python io_uring_faults.py STORE_DIR startup   every io_uring_enter refused before the store opens
    python io_uring_faults.py STORE_DIR reaper    only the completion thread's waits (GETEVENTS)
                                                  refused, after the store runs on io_uring
"""

import ctypes
import errno
import json
import platform
import sys

from moeweave import _native
from moeweave.store import ExpertStore, StoreError

IO_URING_ENTER = 426  # the same number on every Linux architecture since 5.1
SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
GETEVENTS = 1  # IORING_ENTER_GETEVENTS, a bit of io_uring_enter's 4th argument


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def refuse_io_uring_enter(getevents_only: bool) -> None:
    """Every thread of the process, present and future, gets EPERM from io_uring_enter (only
    from calls that wait for completions, with getevents_only)."""
    load_word, jump_eq, jump_set, ret = 0x20, 0x15, 0x45, 0x06
    allow, refuse = 0x7FFF0000, 0x00050000 | errno.EPERM
    nr_offset, flags_offset = 0, 16 + 3 * 8  # seccomp_data: nr, arch, ip, args[6] (low word first)
    if getevents_only:
        program = [
            SockFilter(load_word, 0, 0, nr_offset),
            SockFilter(jump_eq, 0, 3, IO_URING_ENTER),  # other syscalls: allow
            SockFilter(load_word, 0, 0, flags_offset),
            SockFilter(jump_set, 0, 1, GETEVENTS),  # submissions without waiting: allow
            SockFilter(ret, 0, 0, refuse),
            SockFilter(ret, 0, 0, allow),
        ]
    else:
        program = [
            SockFilter(load_word, 0, 0, nr_offset),
            SockFilter(jump_eq, 0, 1, IO_URING_ENTER),
            SockFilter(ret, 0, 0, refuse),
            SockFilter(ret, 0, 0, allow),
        ]
    array = (SockFilter * len(program))(*program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required to install a filter
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC): all threads, the reaper too
    if (
        libc.syscall(SECCOMP_SYSCALL[platform.machine()], 1, 1, ctypes.byref(SockFprog(len(program), array)))
        != 0
    ):
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER)")


def outcome(call, want: bytes | None = None):
    """'ok', or the errno / StoreError text the call raised; 'wrong bytes' if it lied."""
    try:
        expert = call()
    except OSError as error:
        return error.errno
    except StoreError as error:
        return str(error)
    return "ok" if want is None or bytes(expert.buffer.numpy()) == want else "wrong bytes"


def startup(store_dir: str) -> dict:
    refuse_io_uring_enter(getevents_only=False)
    report = {"probe": list(_native.require_cpu_module().io_uring_status())}
    with ExpertStore(store_dir) as store:
        report["backend"] = store.backend
        report["fallback_errno"] = store._engine.fallback_errno
        report["reads"] = [outcome(lambda key=key: store.read(*key)) for key in store.experts()]
    report["forced_uring"] = outcome(lambda: ExpertStore(store_dir, backend="uring"))
    return report


def reaper(store_dir: str, blobs: dict) -> dict:
    with ExpertStore(store_dir, backend="uring") as store:
        keys = store.experts()
        want = {key: blobs[f"{key[0]}.{key[1]}"] for key in keys}
        report = {"before": outcome(lambda: store.read(*keys[0]), want[keys[0]])}
        refuse_io_uring_enter(getevents_only=True)
        report["reads"] = [outcome(lambda key=key: store.read(*key), want[key]) for key in keys]
        handles = [store.prefetch(*key) for key in keys]
        report["prefetches"] = [outcome(handle.wait) for handle in handles]
    report["closed"] = True
    return report


if __name__ == "__main__":
    directory, mode = sys.argv[1], sys.argv[2]
    if mode == "startup":
        print(json.dumps(startup(directory)))
    else:
        blobs = {key: bytes.fromhex(value) for key, value in json.loads(sys.stdin.read()).items()}
        print(json.dumps(reaper(directory, blobs)))
