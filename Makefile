# harbor-relay — every target installs what it needs and stops what it starts.
SHELL := /bin/bash
.DEFAULT_GOAL := help

INFRA_BIN := $(CURDIR)/.local/venv-infra/bin
# Overridable (the tests put stand-ins here).
SAM ?= $(INFRA_BIN)/sam
RELAY ?= cargo run -q --locked -p relay-cli --
PACKAGE_DIR ?= .local/package
# `make deploy GUIDED=1` saves its answers here, never in the tracked
# infra/samconfig.toml; later deploys read them when the file exists.
SAMCONFIG_LOCAL := $(CURDIR)/.local/samconfig.toml
SAMCONFIG = $(if $(or $(GUIDED),$(wildcard $(SAMCONFIG_LOCAL))),$(SAMCONFIG_LOCAL),$(CURDIR)/infra/samconfig.toml)

.PHONY: help demo test soak bench fuzz build build-local package deploy stack-up stack-down stack-status install fmt lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

demo: ## Run the whole pipeline locally end to end (installs, starts and stops the stack)
	scripts/demo.sh

test: ## Run every test: unit + end-to-end against LocalStack and real registries
	scripts/test.sh

soak: ## Soak suite: 200 pushes, 3 destinations, injected faults (see RELIABILITY.md); loopback only, fails after 15 min
	scripts/test.sh -p relay-tests --test soak -- --ignored --nocapture soak_full

bench: ## Performance figures (release build, local stack; see BENCHMARKS.md)
	scripts/bench.sh

fuzz: ## Long fuzz run of the webhook parser, rules and task decoder (RELAY_FUZZ_CASES, RELAY_FUZZ_SEED)
	RELAY_FUZZ_CASES=$${RELAY_FUZZ_CASES:-2000000} RELAY_FUZZ_SEED=$${RELAY_FUZZ_SEED:-$$RANDOM$$RANDOM} \
		cargo test --release --locked -p relay-shared --test fuzz -- --nocapture

build: ## Build the three functions for Lambda (arm64, cargo-lambda via sam build); needs Rust and python3, installs cargo-lambda and the SAM CLI into .local/ (no test stack)
	scripts/build.sh tools sam
	cd infra && PATH="$(INFRA_BIN):$$PATH" SAM_CLI_TELEMETRY=0 $(SAM) build

build-local: ## Build the binaries (debug) for standalone use: webhook, worker, relay
	cargo build --locked -p webhook -p worker -p relay-cli

package: ## The three arm64 Lambda zips and their SHA256SUMS in PACKAGE_DIR (.local/package); needs Rust and cargo-lambda only
	scripts/build.sh package $(PACKAGE_DIR)

# PARAMS=file: template parameters, one KEY=VALUE a line. CONFIG=file: pushed
# to SSM first (CONFIG_TIER=advanced for 8 KB). GUIDED=1: sam's questions.
deploy: build ## sam build + sam deploy, no prompt: make deploy PARAMS=params.env CONFIG=config.yaml (first time by questions: GUIDED=1)
	$(INFRA_BIN)/python scripts/deploy-check.py check $(if $(PARAMS),--params $(PARAMS),--samconfig $(SAMCONFIG))
	$(if $(CONFIG),$(RELAY) config-push $(CONFIG) --parameter $(or $(CONFIG_PARAMETER),$(if $(PARAMS),$(shell $(INFRA_BIN)/python scripts/deploy-check.py value $(PARAMS) ConfigParameterName)),/harbor-relay/config)$(if $(CONFIG_TIER), --tier $(CONFIG_TIER)),)
	$(if $(GUIDED),mkdir -p $(dir $(SAMCONFIG_LOCAL)) && { test -f $(SAMCONFIG_LOCAL) || cp infra/samconfig.toml $(SAMCONFIG_LOCAL); },)
	cd infra && PATH="$(INFRA_BIN):$$PATH" SAM_CLI_TELEMETRY=0 $(SAM) deploy --config-file $(SAMCONFIG) \
		$(if $(GUIDED),--guided,--no-confirm-changeset --no-fail-on-empty-changeset) \
		$(if $(PARAMS),--parameter-overrides $(shell $(INFRA_BIN)/python scripts/deploy-check.py overrides $(PARAMS)),)

install: ## Install what the local stack needs (apt packages, uv, LocalStack venv)
	scripts/stack.sh install

stack-up: ## Start LocalStack and the three registries on 127.0.0.1
	scripts/stack.sh up

stack-down: ## Stop them
	scripts/stack.sh down

stack-status:
	scripts/stack.sh status

fmt:
	cargo fmt --all

lint: ## rustfmt check, clippy -D warnings, no module cycle, cargo deny (advisories offline, licenses, duplicate versions; deny.toml), checkov on the template
	scripts/lint.sh

clean:
	cargo clean
	rm -rf .local/stack .local/demo
