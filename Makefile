# The two entry points of the README: `make run` and `make test`, both from a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
MODEL ?= efficientnet_lite0
PORT ?= 3000

.PHONY: install run test lint pipeline bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

pipeline: $(STAMP)
	$(VENV)/bin/smallnets pipeline $(MODEL) --weights imagenet -o $(ARTIFACTS)/$(MODEL) --force

run: pipeline
	$(VENV)/bin/smallnets serve $(ARTIFACTS)/$(MODEL) --port $(PORT)  # int8 if optimize kept it, else fp32

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(PY) -m pytest

bench: $(STAMP)
	$(VENV)/bin/smallnets bench --models all-default -o benchmarks/results

clean:
	rm -rf $(VENV) $(ARTIFACTS) build *.egg-info
