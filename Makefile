# Every install step lives here: a clean checkout needs only `make setup`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup data demo test lint eval bench-embed bench-index ui ui-screenshot clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	# torch first and pinned: the CPU wheel lies on local disk; unpinned it pulls CUDA builds.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

data: setup
	$(BIN)/recflow data demo

demo: setup
	$(BIN)/recflow data demo
	$(BIN)/recflow run nightly
	$(BIN)/recflow serve --host 127.0.0.1 --port 8000

test: setup
	$(BIN)/recflow data demo
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

eval: setup
	$(BIN)/recflow data demo
	$(BIN)/recflow eval --dataset movielens-100k

bench-embed: setup
	$(BIN)/recflow data demo
	$(BIN)/python -m benchmarks.bench_embed

bench-index: setup
	$(BIN)/python -m benchmarks.bench_index --sizes 100000 1000000

ui: setup
	$(BIN)/recflow data demo
	$(BIN)/recflow ui

# Needs `make ui` running in another shell; installs Debian's chromium when missing.
ui-screenshot: setup
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m deployments.screenshot --out docs/prefect-deployments.png

clean:
	rm -rf var .pytest_cache

.PHONY: bench-scrape
bench-scrape: setup
	$(BIN)/python -m benchmarks.bench_scrape
