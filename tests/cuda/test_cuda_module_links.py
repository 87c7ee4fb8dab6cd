"""The CUDA module loads wherever it was built, GPU or not: an unresolved symbol (a kernel or a
helper left out of the link) shows at import, long before a GPU run would find it."""

import importlib
import importlib.util

import pytest


def test_cuda_module_imports_wherever_it_was_built():
    if importlib.util.find_spec("moeweave._C_cuda") is None:
        pytest.skip("moeweave was built without CUDA (MOEWEAVE_CUDA=OFF or no nvcc)")
    module = importlib.import_module("moeweave._C_cuda")
    assert callable(module.bone_bat_form) and callable(module.bone_bat_block_grad)
