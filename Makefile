# harbor-relay — every target installs what it needs and stops what it starts.
SHELL := /bin/bash
.DEFAULT_GOAL := help

INFRA_BIN := $(CURDIR)/.local/venv-infra/bin

.PHONY: help demo test soak bench fuzz build build-local deploy stack-up stack-down stack-status install fmt lint clean

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

build: ## Build both functions for Lambda (arm64, cargo-lambda via sam build); installs what is missing
	scripts/stack.sh install
	rustup target add aarch64-unknown-linux-gnu
	cd infra && PATH="$(INFRA_BIN):$$PATH" SAM_CLI_TELEMETRY=0 sam build

build-local: ## Build the binaries (debug) for standalone use: webhook, worker, relay
	cargo build --locked -p webhook -p worker -p relay-cli

deploy: build ## sam deploy (first time: make deploy GUIDED=1); CONFIG=file validates it and stores it in SSM first
	$(if $(CONFIG),cargo run -q --locked -p relay-cli -- config-push $(CONFIG) --parameter $(or $(CONFIG_PARAMETER),/harbor-relay/config),)
	cd infra && PATH="$(INFRA_BIN):$$PATH" SAM_CLI_TELEMETRY=0 sam deploy $(if $(GUIDED),--guided,)

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

lint: ## rustfmt check, clippy -D warnings, cargo deny (advisories offline, licenses, duplicate versions; deny.toml)
	scripts/lint.sh

clean:
	cargo clean
	rm -rf .local/stack .local/demo
