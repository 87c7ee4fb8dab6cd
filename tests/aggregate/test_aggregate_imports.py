"""Importing moeweave stays lean (no scikit-learn, LightGBM or quantile-forest); importing
moeweave.aggregate loads the heavy optional libraries only when the default library needs them;
a missing extra fails with the command that installs it."""

import subprocess
import sys

HEAVY = ("sklearn", "scipy", "lightgbm", "quantile_forest", "mapie")

# A meta-path hook that refuses one top-level package, as on an install without the extra.
REFUSE = (
    "import sys\n"
    "class Refuse:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == {name!r}: raise ImportError('refused by test')\n"
    "sys.meta_path.insert(0, Refuse())\n"
)


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def loaded_after(statement: str) -> list[str]:
    code = (
        f"import sys\n{statement}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    result = run(code)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)


def test_import_moeweave_loads_no_aggregate_dependency():
    assert loaded_after("import moeweave") == []


def test_import_aggregate_defers_the_default_library():
    assert set(loaded_after("import moeweave.aggregate")) == {"sklearn", "scipy"}


def test_missing_scikit_learn_names_the_extra():
    result = run(REFUSE.format(name="sklearn") + "import moeweave.aggregate")
    assert result.returncode != 0
    assert (
        "moeweave.aggregate needs scikit-learn, which is not installed: pip install 'moeweave[aggregate]'"
        in result.stderr
    )


def test_missing_lightgbm_names_the_extra_when_the_default_library_is_built():
    code = (
        REFUSE.format(name="lightgbm") + "from moeweave.aggregate import default_library\ndefault_library()"
    )
    result = run(code)
    assert result.returncode != 0
    assert (
        "the default base library needs lightgbm, which is not installed: pip install 'moeweave[aggregate]'"
        in result.stderr
    )
