# The two commands of the README, and the steps behind them. Everything installs into .venv:
# torch is pinned to the CPU wheel that lies on local disk; the package builds without build
# isolation so the CMake build folder (build/) stays warm between runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
DEPS := $(VENV)/.deps-installed

.PHONY: run test install lint cpp-test bench clean

$(DEPS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12"
	touch $@

install: $(DEPS)
	$(PIP) install -q --no-build-isolation -e '.[test,aggregate,serve]'

run: install
	$(VENV)/bin/moeweave info
	$(VENV)/bin/moeweave demo
	# The bundled model's experts are 7.5 MiB at INT4: a 3 MiB budget holds less than half of them.
	$(VENV)/bin/moeweave run --max-new-tokens 64 --memory-budget 3MiB --stats

lint: install
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench

cpp-test:
	cmake -S . -B build/cpp -G Ninja -DMOEWEAVE_PYTHON=OFF -DMOEWEAVE_CUDA=OFF -DMOEWEAVE_BUILD_TESTS=ON > /dev/null
	cmake --build build/cpp
	ctest --test-dir build/cpp --output-on-failure

test: lint cpp-test
	$(PY) -m pytest

bench: install
	for script in bench/[!_]*.py; do [ "$$script" = bench/common.py ] || $(PY) $$script || exit 1; done

clean:
	rm -rf build $(VENV)
