# Nexus: an event-sourced workflow platform. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z_-]*:.*## / {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install the locked dependencies

.PHONY: run
run: $(STAMP) ## Start NATS and the four services on the embedded defaults (Ctrl-C stops)
	$(BIN)/nexus up

.PHONY: test
test: lint typecheck ## Linters, the type checker, then the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# mypy checks the one `nexus` package that setuptools assembles from libs/, proto/ and
# services/; it cannot follow the editable install's import hook, so the package is laid out
# here as links to the sources.
TYPECHECK := build/typecheck
.PHONY: typecheck
typecheck: $(STAMP) ## mypy over the nexus package (libs, proto, services)
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/nexus
	@for f in libs/nexus/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/nexus/; done
	@ln -s "$(CURDIR)/proto" $(TYPECHECK)/nexus/proto && ln -s "$(CURDIR)/services" $(TYPECHECK)/nexus/services
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p nexus

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks, print the table, append it to BENCHMARKS.md
	$(BIN)/python -m bench $(BENCH_ARGS)

.PHONY: demo
demo: $(STAMP) ## Run a workflow end to end on a throw-away platform
	$(BIN)/nexus demo

.PHONY: lint
lint: $(STAMP) ## ruff check and format check; AsyncAPI document up to date (part of `make test`)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m nexus.proto.asyncapi --check

.PHONY: proto
proto: $(STAMP) ## Regenerate proto/asyncapi.yaml from the event and command catalogues
	$(BIN)/python -m nexus.proto.asyncapi --write

.PHONY: lock
lock: ## Re-resolve the dependencies of pyproject.toml into requirements.lock
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet '.[dev]'
	{ echo "# Locked versions of every dependency (direct and transitive) for Python 3.11+."; \
	  echo "# Regenerate with: make lock"; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^nexus'; } > requirements.lock
	rm -rf .lock-venv

.PHONY: clean
clean: ## Remove the virtual environment, caches and the local data directory
	rm -rf $(VENV) .nexus .pytest_cache .ruff_cache build *.egg-info
