# memstack: `make demo` runs the main job on an embedded store; `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STORE ?= demo/store
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
.DELETE_ON_ERROR:

.PHONY: demo test install dev lint completions bench bench-quick clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

install: $(VENV)/.base
dev: $(VENV)/.dev

demo: $(VENV)/.base
	$(BIN)/memstack ingest core/data/sample-chat.jsonl --ns user:alice --store $(DEMO_STORE)
	$(BIN)/memstack store stats --store $(DEMO_STORE) | head -12
	$(BIN)/memstack recall "what is alice allergic to?" "who is alice's manager?" \
		--ns user:alice --store $(DEMO_STORE) -k 3 --budget 120 --format prompt
	$(BIN)/memstack recall "where does alice live now?" --store $(DEMO_STORE) -k 3 \
		--recency 90d --format table --explain
	$(BIN)/memstack consolidate --store $(DEMO_STORE) --format table
	$(BIN)/memstack recall "where does alice live?" --store $(DEMO_STORE) -k 2 \
		--as-of 2024-04-01 --format text
	$(BIN)/memstack quantize --store $(DEMO_STORE) --vectors int8
	$(BIN)/memstack recall "what is alice allergic to?" --store $(DEMO_STORE) -k 1 --format text
	$(BIN)/python -c "import numpy as np; r = np.random.default_rng(0); \
		w = (r.standard_normal((512, 2048)) * 0.02).astype('float32'); w[:, :8] *= 25; \
		np.save('demo/w.npy', w)"
	$(BIN)/memstack quantize demo/w.npy -s q8_0,q4_0,nf4,mx:fp4,bfp:4:outlier,split:q4_0 \
		--report --format table
	$(BIN)/memstack simulate --model llama-3-8b --target l4 --ctx 2048 --weights q4_0 \
		--format table
	$(BIN)/memstack simulate --store $(DEMO_STORE) --model llama-3-8b --target l4 \
		--strategies full-context,recall:k=3,kv-cache --format table
	$(BIN)/memstack offload-plan --model mixtral-8x7b --target rtx4090 --weights q4_0 \
		--budget hbm=20GiB,dram=48GiB -q | $(BIN)/memstack simulate --plan - --format table

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .

completions: $(VENV)/.base
	$(BIN)/python -m memstack.cli.completion completions

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py

bench-quick: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) demo build *.egg-info .pytest_cache .ruff_cache
