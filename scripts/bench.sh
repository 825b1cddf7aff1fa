#!/usr/bin/env bash
# `make bench`: performance figures on this machine (loopback only, bounded).
# Starts the local stack, builds release binaries, runs relay-bench, stops
# the stack. Results go to stdout and .local/bench/latest.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/stack.sh install
trap 'scripts/stack.sh down' EXIT
scripts/stack.sh up
# shellcheck disable=SC1091
source .local/stack/env
cargo build --release --locked -p webhook -p worker -p relay-tests --bins
RELEASE=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
mkdir -p .local/bench
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(uname -m)."
  echo
  for b in ${RELAY_BENCHES:-webhook copy shared reconcile kinds fanout standalone latency lambda-batch sizes}; do
    "$RELEASE/relay-bench" "$b"
    echo
  done
} | tee .local/bench/latest.md
