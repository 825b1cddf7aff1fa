#!/usr/bin/env bash
# `make test`: every test — unit tests and the end-to-end suite against the
# local stack, which this script starts and stops. With arguments, runs
# `cargo test <arguments>` instead of every test (`make soak` does).
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

# `cargo test` builds a package's binaries only for its own integration
# tests; the end-to-end tests also run webhook, worker and reconcile. Built
# with every target, so with the dev-dependencies' features: the binaries
# and the tests then share one build of each dependency (`--bins` alone
# resolves other features and `cargo test` built them all a second time).
cargo build --workspace --all-targets --locked
if (($#)); then
  cargo test --locked "$@"
else
  cargo test --workspace --all-targets --locked
fi
