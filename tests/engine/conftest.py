"""An expert store of the bundled model, written once per session."""

import pytest

from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.store.writer import write_store


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "store"
    write_store(DEMO_MODEL_DIR, path, progress=False)
    return path
