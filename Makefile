# The two commands of the README, and the steps behind them. Everything installs into .venv:
# torch is pinned to the CPU wheel that lies on local disk; the package builds without build
# isolation so the CMake build folder (build/) stays warm between runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
DEPS := $(VENV)/.deps-installed
# Google Benchmark, from Debian's libbenchmark-dev: the native microbenchmarks (bench/cpp) need it.
BENCHMARK_H := /usr/include/benchmark/benchmark.h
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test install lint cpp-test bench bench-cpp clean

$(DEPS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12"
	touch $@

install: $(DEPS)
	$(PIP) install -q --no-build-isolation -e '.[test,aggregate,serve,train]'

run: install
	$(VENV)/bin/moeweave info
	$(VENV)/bin/moeweave demo
	# The bundled model's experts are 7.5 MiB at INT4: a 3 MiB budget holds less than half of them.
	$(VENV)/bin/moeweave run --max-new-tokens 64 --memory-budget 3MiB --stats

lint: install
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench

# The microbenchmarks are built here too (not run) wherever Google Benchmark is installed, so a
# kernel change that breaks them fails the tests; OFF is passed explicitly so that a build folder
# configured while the library was there does not keep asking for it.
cpp-test:
	cmake -S . -B build/cpp -G Ninja -DMOEWEAVE_PYTHON=OFF -DMOEWEAVE_CUDA=OFF -DMOEWEAVE_BUILD_TESTS=ON \
	  -DMOEWEAVE_BUILD_BENCHMARKS=$(if $(wildcard $(BENCHMARK_H)),ON,OFF) > /dev/null
	cmake --build build/cpp
	ctest --test-dir build/cpp --output-on-failure

test: lint cpp-test
	$(PY) -m pytest

bench: install
	for script in bench/[!_]*.py; do [ "$$script" = bench/common.py ] || $(PY) $$script || exit 1; done

# Each binary measures its own STREAM triad first and reports every kernel against it; JSON of
# the run lands next to the binaries. Half a second per benchmark keeps the run (build included)
# within about 3 minutes on 2 cores. apt-get update only when stale package lists fail the install.
bench-cpp:
	test -f $(BENCHMARK_H) || $(SUDO) apt-get install -y libbenchmark-dev || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y libbenchmark-dev)
	cmake -S . -B build/bench-cpp -G Ninja -DMOEWEAVE_PYTHON=OFF -DMOEWEAVE_CUDA=OFF -DMOEWEAVE_BUILD_BENCHMARKS=ON > /dev/null
	cmake --build build/bench-cpp
	for family in quant_matmul moe_experts attention norm_rope reroute store_read decode_step; do \
	  build/bench-cpp/bench/cpp/bench_$$family --benchmark_min_time=0.5 \
	    --benchmark_out=build/bench-cpp/$$family.json --benchmark_out_format=json || exit 1; \
	done

clean:
	rm -rf build $(VENV)
