"""An expert store of the bundled model, with path statistics, written once per session by
`moeweave convert`'s function (INT4, calibrated on 1024 tokens of the model's held-out text, with
an INT2 copy for the low-bit fallback)."""

import pytest

from moeweave.engine.convert import convert
from moeweave.models.bundled import DEMO_MODEL_DIR


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "store"
    convert(DEMO_MODEL_DIR, path, bits="4", calib_tokens=1024, fallback_bits=2)
    return path
