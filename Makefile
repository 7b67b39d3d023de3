# The README's two commands are `make run` and `make test`; both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATASET_FILE := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: setup dataset emulator-check run test train lint format bench clean

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# The Debian package ships the real IDX files; install it when missing and apt is usable.
dataset:
	@if [ -z "$$FASHION_MNIST_DIR" ] && [ ! -f $(DATASET_FILE) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian package dataset-fashion-mnist"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or set FASHION_MNIST_DIR"; exit 1; \
	  fi; \
	fi

emulator-check: setup
	@$(PY) -m broker check

run: setup
	$(PY) -m streamer --rate 200

# Two workers (pytest-xdist), one per core; a file's tests stay on one worker, so its fixtures are built
# once, and the files go out in collection order, the longest first (tests/conftest.py). The tests marked
# serial assert a 15 s bound after a replica is killed, most of which redelivery (the 10 s ack deadline)
# uses up: they run alone afterwards (16.6 s when they shared the cores), collected from their own files
# only (importing every test file costs 6.5 s there).
test: setup emulator-check
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow and not serial"
	$(PY) -m pytest -m "serial and not slow" $$(grep -l "pytest.mark.serial" tests/test_*.py)

train: setup
	$(PY) -m train --config configs/default.py --workdir models/fashion-mnist

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) reports .pytest_cache
