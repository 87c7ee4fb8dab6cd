"""moeweave: Mixture-of-Experts models and the weights inside them.

Importing the package is cheap on purpose: it loads no native module, imports no torch and
initialises no CUDA. Submodules load on first attribute access (``moeweave.ops``,
``moeweave.store``, ...), and the native kernels load when the first tensor reaches an op.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "aggregate",
    "cli",
    "cpu",
    "envs",
    "formats",
    "integrations",
    "models",
    "ops",
    "quant",
    "store",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'moeweave' has no attribute '{name}'")
