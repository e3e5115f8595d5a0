# procfleet's everyday commands; `make` lists them. The work is done by scripts/ so that the same
# steps run by hand, in CI and in the README.
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
WORKERS ?= 4
# `docker compose` (v2) when present, else docker-compose (v1).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
export PYTHON COMPOSE

# The images' version tag (scripts/images.sh), the packages' version.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' master/pyproject.toml)

PYPROJECTS := shared/pyproject.toml master/pyproject.toml worker/pyproject.toml
VENV_STAMP := $(VENV)/.procfleet-installed

.PHONY: help venv unit integration chaos test base-image wheels images push save load .env up run \
    down serve submit serve-down clean distclean

help: ## Show this list
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_.-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

venv: $(VENV_STAMP) ## Dev venv: editable packages + pytest, docker, selenium, kubernetes-validate

# A real file, so the install re-runs only when a pyproject changes, or this list (the Makefile).
$(VENV_STAMP): $(PYPROJECTS) Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check \
	    -e ./shared -e ./master -e ./worker --config-settings editable_mode=compat \
	    pytest pytest-docker pytest-timeout docker hypothesis selenium kubernetes-validate
	touch $@

unit: venv ## Unit and end-to-end tests (no Docker)
	$(VENV)/bin/python -m pytest tests/unit tests/e2e

integration: venv images ## Integration tests against the real images and docker-compose.yml
	$(VENV)/bin/python -m pytest tests/integration

chaos: venv images ## Fault tests only (processes and compose), ending with the chaos table
	$(VENV)/bin/python -m pytest -m chaos tests/e2e tests/integration

test: ## unit, then integration
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory integration

base-image: ## Build the local Debian base image procfleet-base:bookworm (mmdebstrap)
	scripts/build-base-image.sh

wheels: ## Download the images' wheels into build/wheels/ (offline image builds)
	scripts/wheels.sh

images: ## Build procfleet-master and -worker, tagged latest and the version (local base if no registry)
	scripts/images.sh

# Images to other hosts: through a registry, or a tarball for hosts without one. TAG defaults to
# the package version (master/pyproject.toml).
push: ## Push both images to REGISTRY=host:port as :TAG (default the version) and :latest
	@test -n "$(REGISTRY)" || { echo "make push: give REGISTRY=host:port" >&2; exit 2; }
	scripts/push.sh "$(REGISTRY)" $(TAG)

save: ## Both images :TAG into FILE (default build/procfleet-images-TAG.tar.gz)
	scripts/save.sh $(if $(TAG),--tag "$(TAG)") $(FILE)

load: ## Load a tarball of make save (FILE=...) and tag its images latest too
	@test -n "$(FILE)" || { echo "make load: give FILE=procfleet-images-VERSION.tar.gz" >&2; exit 2; }
	scripts/load.sh "$(FILE)"

.env: ## Write .env with a random PROCFLEET_AUTHKEY unless it has one
	scripts/env-file.sh .env

up: images .env ## Run the demo: master + WORKERS (4) workers; fails unless the master exits 0
	scripts/up.sh $(WORKERS)

# IMPORTS names the workers' task modules (PROCFLEET_IMPORTS), which the worker image must hold.
run: images .env ## One batch of your own: TASKS=FILE [WORKERS=4] [IMPORTS=mod]; FILE.results.jsonl
	@test -n "$(TASKS)" || { echo "make run: give TASKS=FILE (a JSON Lines task file)" >&2; exit 2; }
	$(if $(IMPORTS),PROCFLEET_IMPORTS="$(IMPORTS)") scripts/run.sh "$(TASKS)" $(WORKERS)

down: ## Stop and remove the compose containers and network
	scripts/down.sh

# A cluster that stays up (docker-compose.serve.yml): jobs come from `make submit`.
serve: images .env ## Start the service-mode cluster (WORKERS=4) detached; returns once it is healthy
	scripts/serve.sh $(WORKERS)

# SUBMIT_ARGS passes submit's options, e.g. SUBMIT_ARGS="--timeout 600 --retries 2". The exit
# code is submit's (0 ok, 1 some failed, 2 bad input, 3 unfinished); make reports it as an error.
# Not echoed: with RESULTS=- stdout holds the result lines alone.
submit: ## One job: TASKS=FILE [RESULTS=FILE, default FILE.results.jsonl] [SUBMIT_ARGS=...]
	@test -n "$(TASKS)" || { echo "make submit: give TASKS=FILE (a JSON Lines task file)" >&2; exit 2; }
	@scripts/submit.sh "$(TASKS)" $(if $(RESULTS),"$(RESULTS)") -- $(SUBMIT_ARGS)

serve-down: ## Stop and remove the service-mode cluster
	scripts/serve-down.sh

# Docker Swarm (deploy/stack.yml, README "Deploy"): needs a swarm manager (`docker swarm init`).
# STACK_ARGS=-v makes stack-down remove the stack's volume (journal and results) as well.
.PHONY: stack-up stack-down

stack-up: images .env ## Deploy deploy/stack.yml on this swarm: master + WORKERS (4) replicas, key as a secret
	scripts/stack-up.sh $(WORKERS)

stack-down: ## Remove the Swarm stack (STACK_ARGS=-v: its volume too; the secret stays)
	scripts/stack-down.sh $(STACK_ARGS)

clean: ## down -v and serve-down, and remove the downloaded wheels and build output
	scripts/down.sh -v
	scripts/serve-down.sh
	rm -rf build/wheels/*.whl build/wheels/.download.*

distclean: clean ## clean, and remove the venv and the images
	rm -rf $(VENV)
	-docker image rm procfleet-master:latest procfleet-worker:latest procfleet-base:bookworm \
	    procfleet-master:$(VERSION) procfleet-worker:$(VERSION)

# Benchmarks (bench/, docs/benchmarks.md): outside `make test`, so the tests never need matplotlib;
# it goes into the same venv through a stamp of its own. BENCH_ARGS passes options, e.g.
# BENCH_ARGS="--procfleet other-venv/bin/procfleet --no-compose" (python -m bench --help).
.PHONY: bench bench-quick
BENCH_STAMP := $(VENV)/.procfleet-bench-installed

$(BENCH_STAMP): $(VENV_STAMP)
	$(VENV)/bin/python -m pip install --disable-pip-version-check matplotlib
	touch $@

bench: $(BENCH_STAMP) ## Full benchmarks (3 runs a case, rebuilds the images): docs/benchmarks.md + .png
	$(VENV)/bin/python -m bench --full --build-images $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP) ## Short benchmark run (~4 min, indicative): docs/benchmarks.md + .png
	$(VENV)/bin/python -m bench --quick $(BENCH_ARGS)
