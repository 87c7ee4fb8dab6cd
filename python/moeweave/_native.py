"""Lazy, failure-tolerant loading of the native modules.

``moeweave._C`` (CPU) loads on the first op call with a CPU tensor and ``moeweave._C_cuda`` on
the first call with a CUDA tensor. A module that is missing or cannot load is reported once as
a warning and the ops fall back to their plain-torch twins (moeweave.ops.reference), so a
broken CUDA install never takes the CPU path down with it.
"""

import functools
import importlib
import warnings
from types import ModuleType

from moeweave import envs

_load_errors: dict[str, str] = {}


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"moeweave.{name}")
    except ImportError as error:
        # Ctrl-C during the extension's initialisation reaches us as pybind11's ImportError;
        # it is the user's interrupt, not a missing module to fall back from.
        if isinstance(error.__cause__, KeyboardInterrupt):
            raise error.__cause__ from None
        _load_errors[name] = str(error)
        return None


@functools.cache
def cpu_module() -> ModuleType | None:
    """moeweave._C configured from MOEWEAVE_ISA / MOEWEAVE_NUM_THREADS, or None when unavailable."""
    module = _import("_C")
    if module is None:
        return None
    forced = envs.isa()
    if forced is not None:
        try:
            module.set_isa(forced)
        except ValueError as error:
            raise ValueError(f"MOEWEAVE_ISA={forced!r}: {error}") from None
    threads = envs.num_threads()
    if threads is not None:
        module.set_num_threads(threads)
    return module


@functools.cache
def cuda_module() -> ModuleType | None:
    """moeweave._C_cuda, or None when it was not built or cannot load."""
    return _import("_C_cuda")


def load_error(name: str) -> str | None:
    """Why moeweave.<name> could not be imported, once a load was attempted."""
    return _load_errors.get(name)


@functools.cache
def _warn_fallback(device_type: str) -> None:
    name = "_C" if device_type == "cpu" else "_C_cuda"
    reason = _load_errors.get(name, "no native kernels for this device type")
    warnings.warn(
        f"moeweave: native {device_type} kernels unavailable ({reason}); using the plain-torch "
        "reference implementations",
        RuntimeWarning,
        stacklevel=3,
    )


def module_for(device_type: str) -> ModuleType | None:
    """The native module serving tensors on this device type; None (after one warning) means
    the caller should use the reference implementation."""
    module = cpu_module() if device_type == "cpu" else cuda_module() if device_type == "cuda" else None
    if module is None:
        _warn_fallback(device_type)
    return module


def require_cpu_module() -> ModuleType:
    module = cpu_module()
    if module is None:
        raise RuntimeError(
            f"moeweave's native CPU module is not available ({load_error('_C')}); "
            "reinstall moeweave so that it builds (pip install -v .)"
        )
    return module
