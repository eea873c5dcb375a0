# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Bounded suite for 2 cores; `make test-all` adds the slow soak/chaos tests.
PYTEST_ARGS ?=
# pytest-xdist workers: most tests wait on clusters (starts, heartbeats, kills), so
# three share two cores well. Each takes whole modules (a module's cluster starts
# once), the longest first (tests/conftest.py). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 3
XDIST := -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder
# The suite starts many interpreters (xdist workers, CLIs, MPI ranks, a notebook kernel,
# jobs): with PYTHONDONTWRITEBYTECODE set, each compiled qdask and rewrote the tests
# anew (9 of 331 CPU-s of a run). The tests write bytecode caches (__pycache__/, ignored by git).
BYTECODE := PYTHONDONTWRITEBYTECODE=

.PHONY: demo lint test test-all test-compat bench docs clean qsim-gpu gpu-sdists gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24" setuptools wheel

$(VENV)/.stamp-base: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

# mitiq's releases all pin cirq-core<1.7, so it cannot be an ordinary extra;
# its ZNE and readout mitigation work with cirq 1.7 (docs/hybrid.md).
MITIQ := mitiq==1.1.0

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps "$(MITIQ)"
	touch $@ $(VENV)/.stamp-base

demo: $(VENV)/.stamp-base
	$(VENV)/bin/qdask demo

# ruff and mypy (settings in pyproject.toml); .ci/run runs it before the tests.
lint: $(VENV)/.stamp-test
	$(PY) -m ruff check qdask plugins tests benchmarks
	$(PY) -m mypy qdask plugins

test: $(VENV)/.stamp-test
	$(BYTECODE) $(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

test-all: $(VENV)/.stamp-test
	$(BYTECODE) $(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.stamp-test
	$(PY) benchmarks/run_all.py

# --- compatibility (qdask/_compat.py) -----------------------------------------
# A second venv with the newest dask, distributed and qsimcirq the index serves
# (past qdask's own pins: pip warns about them and installs anyway), then the
# canaries of every private Dask/qsimcirq behaviour qdask relies on and the
# core tests. Another stack: `make test-compat COMPAT_DEPS="distributed==2026.7.1 dask==2026.7.1"`.
COMPAT_VENV  := .venv-compat
COMPAT_PY    := $(COMPAT_VENV)/bin/python
COMPAT_PIP   := $(COMPAT_PY) -m pip --disable-pip-version-check -q
COMPAT_DEPS  ?= dask distributed qsimcirq
COMPAT_TESTS ?= tests/test_compat.py tests/test_quantum_units.py tests/test_config.py tests/test_quantum.py

$(COMPAT_PY):
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PIP) install --upgrade "pip>=24" setuptools wheel

test-compat: | $(COMPAT_PY)
	$(COMPAT_PIP) install -e ".[clifford]" "pytest>=8" "pytest-timeout>=2.3" "jsonschema>=4.20"
	$(COMPAT_PIP) install --upgrade $(COMPAT_DEPS)
	@$(COMPAT_PY) -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in ('dask', 'distributed', 'qsimcirq', 'cirq-core', 'bokeh', 'tornado')))"
	$(COMPAT_PY) -m pytest -m "not slow" $(PYTEST_ARGS) $(COMPAT_TESTS)

$(VENV)/.stamp-docs: pyproject.toml | $(PY)
	$(PIP) install -e ".[docs]"
	touch $@ $(VENV)/.stamp-base

# The documentation site into site/; any warning (broken link, bad docstring) fails it.
# The notebooks are executed into it (docs/hooks.py, ~20 s); QDASK_DOCS_NOTEBOOKS=source
# renders them as stored, without outputs.
docs: $(VENV)/.stamp-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist *.egg-info .pytest_cache

# --- GPU (docs/gpu.md) --------------------------------------------------------
# `.whl/` is git-ignored: what the lent GPU machine needs travels there
# (scripts/gpu_check.sh). CUDA_ARCH=90 is Hopper (H100/H200).
WHL       := .whl
CUDA_ARCH ?= 90
QSIM_GPU_VENV := build/qsim-gpu-venv
QSIM_SDIST    := $(WHL)/sdist/qsimcirq-0.22.0.tar.gz
# cp312 manylinux wheels of what the lent machine's image lacks (its Python is
# 3.12 and already holds numpy, cupy, cuda-bindings, nvidia-ml-py, pytest, ...).
# About 57 MiB (libucx alone is 40): a call carries 64 MiB with the repo, so
# bokeh (6 MiB, dashboard only) stays behind.
GPU_WHEELS := dask==2026.7.1 distributed==2026.7.1 \
	tornado==6.6.1 tblib==3.2.2 zict==3.0.0 partd==1.4.2 locket==1.0.0 \
	cirq-core==1.7.0 duet==0.2.9 \
	dask-cuda==26.10.0 distributed-ucxx-cu13==0.52.0 ucxx-cu13==0.52.0 \
	libucxx-cu13==0.52.0 libucx-cu13==1.21.0 rmm-cu13==26.10.0 librmm-cu13==26.10.0 \
	rapids-logger==0.3.0
CP312 := --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 --platform manylinux1_x86_64

gpu-sdists: $(QSIM_SDIST)
$(QSIM_SDIST): | $(PY)
	$(PIP) download --no-deps --no-binary qsimcirq,pybind11 -d $(WHL)/sdist qsimcirq==0.22.0 pybind11==3.1.0

$(QSIM_GPU_VENV)/bin/python:
	$(PYTHON) -m venv $(QSIM_GPU_VENV)
	$(QSIM_GPU_VENV)/bin/python -m pip --disable-pip-version-check -q install \
		"cmake~=3.31.0" "setuptools>=75.2" wheel pybind11==3.1.0

# GPU-enabled qsimcirq for this machine's Python, into dist/ (needs nvcc).
qsim-gpu: $(QSIM_SDIST) $(QSIM_GPU_VENV)/bin/python
	PATH="$(abspath $(QSIM_GPU_VENV))/bin:$$PATH" PYTHON=$(QSIM_GPU_VENV)/bin/python \
		SRC=$(WHL)/sdist DEST=dist CUDA_ARCH=$(CUDA_ARCH) bash scripts/build_qsim_gpu.sh
	@echo "Install it with: $(PY) -m pip install --no-deps --force-reinstall dist/qsimcirq-0.22.0-*.whl"

# Wheels + sdists for scripts/gpu_check.sh on the lent GPU machine (no network there).
gpu-wheels: $(QSIM_SDIST) | $(PY)
	$(PIP) download --no-deps $(CP312) -d $(WHL) $(GPU_WHEELS)
	@du -sh $(WHL)
