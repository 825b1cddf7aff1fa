#!/usr/bin/env bash
# `make lint`: formatting, clippy with warnings as errors, and `cargo deny`
# (advisories, licenses, duplicate versions, sources; policy in deny.toml).
# Installs cargo-deny when missing. The RustSec advisory database is read
# offline from a git bundle: RELAY_ADVISORY_BUNDLE, or the snapshot kept
# next to this checkout (../shared/advisory-db/advisory-db.bundle).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DENY_VERSION=0.20.2

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
  echo "[lint] installing cargo-deny $DENY_VERSION (once per machine)"
  cargo install --locked --quiet "cargo-deny@$DENY_VERSION"
fi

bundle=${RELAY_ADVISORY_BUNDLE:-}
if [ -z "$bundle" ]; then
  for candidate in "$ROOT/../shared/advisory-db/advisory-db.bundle" /work/shared/advisory-db/advisory-db.bundle; do
    if [ -f "$candidate" ]; then bundle=$candidate; break; fi
  done
fi
if [ -z "$bundle" ] || [ ! -f "$bundle" ]; then
  echo "[lint] no advisory database bundle: set RELAY_ADVISORY_BUNDLE to a git bundle of rustsec/advisory-db" >&2
  exit 1
fi
# The directory name is the one cargo-deny derives from deny.toml's db-urls.
db=.local/advisory-db/advisory-db-3157b0e258782691
rm -rf .local/advisory-db
mkdir -p .local/advisory-db
git -c init.defaultBranch=main clone --quiet "$bundle" "$db"
echo "[lint] advisory database: $(git -C "$db" log -1 --format='%cs %s')"

# --offline needs every locked crate, for every platform.
cargo fetch --locked --quiet
cargo deny --offline check
