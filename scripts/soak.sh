#!/usr/bin/env bash
# `make soak`: the full soak suite (200 pushes into 3 destinations with
# faults; see tests/src/soak.rs). Loopback only, bounded (fails after 15
# minutes). Starts and stops the local stack; the figures go to stdout and
# .local/soak/latest.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/stack.sh install
started=0
cleanup() { [ $started = 1 ] && scripts/stack.sh down; }
trap cleanup EXIT
scripts/stack.sh up
started=1
# shellcheck disable=SC1091
source .local/stack/env
cargo build --workspace --bins --locked
cargo test --locked -p relay-tests --test soak -- --ignored --nocapture soak_full
