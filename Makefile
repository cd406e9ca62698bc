# Everything a fresh machine (Python 3.11, pip, gcc) needs: `make demo` and `make test`
# create .venv themselves. torch is installed first, pinned to the CPU build on disk.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.stamen-installed

.PHONY: demo test test-fast lint docs bench clean nginx

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/stamen simulate --dataset ml-100k --output results/ml-100k

# nginx fronts the SuperLink in the closed control plane's tests (docs/operator.md):
# installed from the Debian registry when it is missing, so that they never skip.
# Debian puts it in /usr/sbin, which an unprivileged PATH may lack.
NGINX_PATH := $(PATH):/usr/sbin:/usr/local/sbin
nginx:
	@if PATH="$(NGINX_PATH)" command -v nginx >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "nginx: not installed, and no apt-get to install it with: install nginx" >&2; exit 1; \
	else \
	  echo "nginx: not installed; installing it from the Debian registry (apt-get)" >&2; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nginx \
	    >/dev/null && PATH="$(NGINX_PATH)" command -v nginx >/dev/null || \
	  { echo "nginx: apt-get install nginx failed (the closed control plane's tests need it)" >&2; \
	    exit 1; }; \
	fi

test: $(STAMP) nginx
	$(BIN)/ruff check .
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest

test-fast: $(STAMP) nginx
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/protocol.py --dataset ml-100k --seeds 0 1 2 --config benchmarks/ml-100k.toml

clean:
	rm -rf $(VENV) results site .pytest_cache .ruff_cache .mypy_cache
