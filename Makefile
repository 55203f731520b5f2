# Two entry points for a fresh clone: `make demo` and `make test`. Both set everything up first
# (idempotent: a second run only checks stamps).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.robustlab-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: demo test test-slow test-all bench bench-peers setup data clean docs lint mutants

setup: $(STAMP) data

# torch first, pinned: the CPU wheel on disk. An unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,docs,tensorboard]'
	touch $(STAMP)

data:
	@bash scripts/ensure-data.sh

demo: setup
	$(PY) -m robustlab demo

test: setup lint
	$(PY) -m pytest -q

# ruff over src and tests (README's test command runs it first); mypy over the package.
lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy src/robustlab

# The user guide and API reference: site/index.html. `make test` builds it too (tests/docs).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m 'slow or not slow'

bench: setup
	$(PY) benchmarks/pgd_floor.py

# The peers without their dependency on torchvision (it would replace the CPU torch wheel with a
# CUDA build and does not import beside it); torchattacks does not need it for its attacks.
PEERS_STAMP := $(VENV)/.peers-installed
$(PEERS_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchattacks==3.5.1 foolbox==3.3.4 adversarial-robustness-toolbox==1.20.1
	$(PY) -m pip install -q --disable-pip-version-check eagerpy GitPython requests scipy six scikit-learn tqdm typing-extensions
	touch $(PEERS_STAMP)

bench-peers: setup $(PEERS_STAMP)
	$(PY) benchmarks/peers.py --readme README.md --markdown benchmarks/peers-results.md

# Hand-written mutations of src/ in a temporary copy, each against its targeted tests: caught/survived.
# Not part of make test (about 8 minutes).
mutants: setup
	$(PY) scripts/mutants.py

clean:
	rm -rf $(VENV) runs site .pytest_cache build src/*.egg-info
