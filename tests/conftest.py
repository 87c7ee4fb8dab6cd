"""Shared fixtures: the ISA levels this CPU supports, so CPU kernel tests run under each; a way
to start a command that Ctrl-C can interrupt."""

import functools
import signal
import subprocess

import pytest

import moeweave.cpu


def pytest_generate_tests(metafunc):
    if "isa" in metafunc.fixturenames:
        metafunc.parametrize("isa", moeweave.cpu.supported_isas(), indirect=True)


@pytest.fixture
def isa(request):
    """Run the test with the CPU kernels dispatched to one ISA level."""
    with moeweave.cpu.use_isa(request.param):
        yield request.param


def _sigint_default() -> None:
    """In the child before it runs: a shell that started the tests in the background (as CI
    may) leaves SIGINT ignored, and Python keeps an inherited SIG_IGN instead of raising
    KeyboardInterrupt, so the command under test would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def interruptible_popen():
    """subprocess.Popen(argv, **kwargs) with text stdout and stderr pipes and SIGINT at its
    default in the child."""
    return functools.partial(
        subprocess.Popen,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )


def _uring_works() -> bool:
    from moeweave import _native

    return _native.require_cpu_module().io_uring_status()[0]


@pytest.fixture(params=["uring", "pread"])
def backend(request) -> str:
    """Each io backend of the expert store; io_uring is skipped where the kernel refuses it."""
    if request.param == "uring" and not _uring_works():
        pytest.skip("io_uring is refused here")
    return request.param


@pytest.fixture
def uring_works() -> bool:
    """Whether this kernel lets the process use io_uring (the store's default backend then)."""
    return _uring_works()
