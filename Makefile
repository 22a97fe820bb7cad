# The two front-door commands: `make demo` and `make test`. Both create or update .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install services lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject's `train` extra.
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@touch $(STAMP)

install: $(STAMP)

## make demo: generate a sample dataset, train, export, serve, run a simulated line, verify the log.
demo: install
	$(BIN)/python -m inspection demo

## make test: the whole suite (starts PostgreSQL / Mosquitto and installs chromium when missing).
test: install services
	$(BIN)/python -m pytest

services:
	@bash scripts/ensure-services.sh

## make lint: ruff (line length enforced) and mypy over every package (pyproject's [tool.mypy]); CI runs it.
lint: install
	$(BIN)/ruff check inspection serving training sim tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/serve_latency.py
	$(BIN)/python bench/train_quality.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-output
