"""Optional dependencies of moeweave.aggregate. The rest of moeweave needs none of them, so they
live in the `aggregate` extra; a missing one fails with the command that installs it instead of
a bare ModuleNotFoundError from deep inside a fit."""

import importlib
from types import ModuleType

# import name -> distribution name on the package index
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "quantile_forest": "quantile-forest",
    "lightgbm": "lightgbm",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (a dotted name) or raise ImportError naming `purpose` and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        distribution = _DISTRIBUTIONS.get(top, top)
        raise ImportError(
            f"{purpose} needs {distribution}, which is not installed: "
            f"pip install 'moeweave[aggregate]' (or pip install {distribution})"
        ) from error
