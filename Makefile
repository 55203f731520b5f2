# Two entry points for a fresh clone: `make demo` and `make test`. Both set everything up first
# (idempotent: a second run only checks stamps).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.robustlab-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: demo test test-slow test-all bench setup data clean

setup: $(STAMP) data

# torch first, pinned: the CPU wheel on disk. An unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

data:
	@bash scripts/ensure-data.sh

demo: setup
	$(PY) -m robustlab demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m 'slow or not slow'

bench: setup
	$(PY) benchmarks/pgd_floor.py

clean:
	rm -rf $(VENV) runs .pytest_cache build src/*.egg-info
