"""Shared fixtures: the ISA levels this CPU supports, so CPU kernel tests run under each."""

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
