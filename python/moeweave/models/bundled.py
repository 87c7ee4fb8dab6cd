"""Where the bundled demo model lives: package data, trained by moeweave.recipes.demo_model.
It is the default model of `moeweave run` when no model is given."""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "demo_model"


def default_model_dir() -> Path:
    if not (DEMO_MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"the bundled demo model is missing from {DEMO_MODEL_DIR}; pass a model directory, or train it with "
            "`python -m moeweave.recipes.demo_model`"
        )
    return DEMO_MODEL_DIR
