"""Where the recipe writes: the bundled demo model inside the package (its location is defined
once, in moeweave.models.bundled), everything large outside it.

Large outputs (the downloaded gensim wheel, random benchmark checkpoints) go under
`moeweave.envs.cache_dir()` (`MOEWEAVE_CACHE_DIR`, default `~/.cache/moeweave`).
"""

from moeweave.models.bundled import DEMO_MODEL_DIR

PACKAGE_ROOT = DEMO_MODEL_DIR.parents[1]

__all__ = ["DEMO_MODEL_DIR", "PACKAGE_ROOT"]
