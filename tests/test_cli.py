"""The moeweave command: `info` reports what this machine can do, `demo` runs the ops."""

import json
import os
import subprocess
import sys
from pathlib import Path

import moeweave.cpu

MOEWEAVE = Path(sys.executable).with_name("moeweave")


def _cli(*args: str) -> str:
    return subprocess.run([str(MOEWEAVE), *args], capture_output=True, text=True, check=True).stdout


def test_info_reports_isa_modules_and_io_uring():
    text = _cli("info")
    assert f"ISA in use: {moeweave.cpu.current_isa()}" in text
    assert "native CPU module: loaded" in text
    assert "io_uring:" in text and "CUDA module:" in text


def test_info_json_matches_this_machine():
    report = json.loads(_cli("info", "--json"))
    assert report["cpu_module"]["supported_isas"] == moeweave.cpu.supported_isas()
    assert report["cpu_module"]["threads"] == (len(os.sched_getaffinity(0)))
    # CPUID as the kernel reads it: /proc/cpuinfo's flags (avx512_bf16 implies the avx512 level's
    # flags on every CPU that has it)
    assert report["cpu_module"]["avx512_bf16"] == (
        "avx512_bf16" in moeweave.cpu.cpuinfo_field("flags").split()
    )
    # The probe must agree with the kernel: try the syscall directly (425 = io_uring_setup on
    # x86-64 and arm64) with a zeroed params struct.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 1, params)
    if fd >= 0:
        os.close(fd)
    assert report["io_uring"]["available"] == (fd >= 0)


def test_demo_agrees_with_reference():
    text = _cli("demo")
    assert "max |ours - reference| = 0" in text
    assert "equal to reference: True" in text


def test_cli_quiets_openmp_spinning_before_torch_loads():
    """The command sets OMP_WAIT_POLICY=PASSIVE for torch's OpenMP runtime (read once, when
    torch loads) unless the user chose a policy."""
    probe = (
        "import os, sys; from moeweave.cli import main; main(['info', '--json']); "
        "sys.stderr.write(os.environ['OMP_WAIT_POLICY'])"
    )
    for preset, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if preset:
            env["OMP_WAIT_POLICY"] = preset
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        assert done.stderr.endswith(expected)


def test_keep_freed_memory_sets_glibcs_trim_threshold(monkeypatch):
    """keep_freed_memory (which the command calls) sets glibc's M_TRIM_THRESHOLD (mallopt
    parameter -1) so that freed heap memory is reused rather than returned and faulted in again,
    unless MALLOC_TRIM_THRESHOLD_ chose otherwise."""
    calls = []

    class Libc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(moeweave.cpu.ctypes, "CDLL", lambda name: Libc())
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    moeweave.cpu.keep_freed_memory()
    assert calls == [(-1, 1 << 30)]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    moeweave.cpu.keep_freed_memory()
    assert calls == [(-1, 1 << 30)]
