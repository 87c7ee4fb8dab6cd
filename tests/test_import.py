"""Importing moeweave is lean: no native module, no torch, no CUDA until an op needs them."""

import json
import os
import subprocess
import sys

import pytest


def _run(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    return result.stdout.strip()


def test_import_loads_no_native_module_and_no_torch():
    code = "import moeweave, sys; print(sorted(m for m in sys.modules if m.startswith(('moeweave._C', 'torch'))))"
    assert _run(code) == "[]"


def test_cpu_op_loads_only_the_cpu_module_and_never_initialises_cuda():
    code = (
        "import sys, torch, moeweave.ops\n"
        "moeweave.ops.silu_mul(torch.ones(3), torch.ones(3))\n"
        "print(sorted(m for m in sys.modules if m.startswith('moeweave._C')), torch.cuda.is_initialized())"
    )
    assert _run(code) == "['moeweave._C'] False"


def test_missing_native_module_falls_back_to_reference():
    # A meta-path hook that refuses the native modules, as on an install whose build failed.
    code = (
        "import sys, warnings, torch\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('moeweave._C'): raise ImportError('refused by test')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import moeweave.ops\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = moeweave.ops.silu_mul(torch.zeros(2), torch.ones(2))\n"
        "print(out.tolist(), any('plain-torch reference' in str(w.message) for w in caught))"
    )
    assert _run(code) == "[0.0, 0.0] True"


def test_forced_isa_from_environment():
    code = "import torch, moeweave.ops, moeweave.cpu; moeweave.ops.silu_mul(torch.ones(1), torch.ones(1)); print(moeweave.cpu.current_isa())"
    assert _run(code, MOEWEAVE_ISA="scalar") == "scalar"


def test_unsupported_forced_isa_is_a_clear_error():
    code = "import moeweave.cpu; moeweave.cpu.current_isa()"
    with pytest.raises(subprocess.CalledProcessError) as failure:
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "MOEWEAVE_ISA": "neon"},
        )
    assert "MOEWEAVE_ISA='neon': unknown ISA 'neon'" in failure.value.stderr


def test_thread_count_from_environment():
    report = json.loads(
        _run("from moeweave.cli import main; main(['info', '--json'])", MOEWEAVE_NUM_THREADS="3")
    )
    assert report["cpu_module"]["threads"] == 3
    assert report["environment"]["MOEWEAVE_NUM_THREADS"] == "3"


def test_subpackages_are_attributes_of_the_package():
    """`import moeweave; moeweave.store` works like `moeweave.ops`."""
    code = (
        "import moeweave\n"
        "names = ('cpu', 'formats', 'integrations', 'models', 'ops', 'quant', 'store')\n"
        "print([getattr(moeweave, n).__name__ for n in names])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = ("cpu", "formats", "integrations", "models", "ops", "quant", "store")
    assert result.stdout.strip() == str([f"moeweave.{n}" for n in names])
