#!/usr/bin/env bash
# `make lint`: formatting, clippy with warnings as errors, no module cycle
# (scripts/shape.py), `cargo deny`
# (advisories, licenses, duplicate versions, sources; policy in deny.toml),
# and checkov on the SAM template and on its transform (skips are inline in
# infra/template.yaml, each with its reason). Installs cargo-deny, and
# checkov into .local/venv-lint (PyPI, once), when missing. The RustSec advisory database is read
# offline from a git bundle: RELAY_ADVISORY_BUNDLE, or the snapshot kept
# next to this checkout (../shared/advisory-db/advisory-db.bundle).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DENY_VERSION=0.20.2
CHECKOV_VERSION=3.3.30
# The SAM transform of the template checkov also scans (infra/transform.py).
SAM_TRANSLATOR_VERSION=1.115.0

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# No module of a crate depends on one that depends back on it (cargo
# already refuses such cycles between crates).
python3 scripts/shape.py --check >/dev/null

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

# checkov: offline once installed (--skip-download: no Prisma Cloud calls).
venv=.local/venv-lint
if [ "$("$venv/bin/checkov" --version 2>/dev/null)" != "$CHECKOV_VERSION" ] \
  || [ "$("$venv/bin/python" -c 'import samtranslator; print(samtranslator.__version__)' 2>/dev/null)" != "$SAM_TRANSLATOR_VERSION" ]; then
  echo "[lint] installing checkov $CHECKOV_VERSION and aws-sam-translator $SAM_TRANSLATOR_VERSION into $venv (once per checkout)"
  uv=$(command -v uv || true)
  [ -x .local/tools/bin/uv ] && uv=.local/tools/bin/uv
  if [ -n "$uv" ]; then
    [ -x "$venv/bin/python" ] || "$uv" venv -q -p python3.11 "$venv" || "$uv" venv -q "$venv"
    VIRTUAL_ENV=$venv "$uv" pip install -q "checkov==$CHECKOV_VERSION" "aws-sam-translator==$SAM_TRANSLATOR_VERSION"
  else
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q "checkov==$CHECKOV_VERSION" "aws-sam-translator==$SAM_TRANSLATOR_VERSION"
  fi
fi
transformed=.local/venv-lint/template.transformed.json
"$venv/bin/python" infra/transform.py infra/template.yaml >"$transformed"
for template in infra/template.yaml "$transformed"; do
  echo "[lint] checkov $CHECKOV_VERSION: $template"
  "$venv/bin/checkov" --file "$template" --framework cloudformation --skip-download \
    --quiet --compact --output cli
done
