#!/usr/bin/env bash
# What `make build`, `make package` and `make deploy` need, and nothing of the
# test stack (no apt, no LocalStack, no moto, no root): Rust, cargo-lambda
# (with the zig it cross-compiles through) and, to build and deploy with SAM,
# the SAM CLI. Works on Linux and macOS.
#
#   scripts/build.sh tools [sam]   cargo-lambda (and the SAM CLI) into .local/venv-infra when missing
#   scripts/build.sh package DIR   the three arm64 Lambda zips in DIR, with DIR/SHA256SUMS
#
# A cargo-lambda on PATH is used as it is; otherwise the one in
# .local/venv-infra, installed there with pip (python3 -m venv) if missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.local/venv-infra
# The versions the tests run with (scripts/stack.sh installs the same).
CARGO_LAMBDA_VERSION=1.9.2
SAM_VERSION=1.170.0
FUNCTIONS=(webhook worker reconcile)

log() { printf '[build] %s\n' "$*" >&2; }

pip_install() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating .local/venv-infra (python3 -m venv)"
    python3 -m venv "$VENV"
  fi
  # A venv made by uv has no pip: give it one.
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip -q
  log "installing $* into .local/venv-infra"
  "$VENV/bin/python" -m pip install -q "$@"
}

cargo_lambda() {
  if command -v cargo-lambda >/dev/null; then
    command -v cargo-lambda
    return
  fi
  [ -x "$VENV/bin/cargo-lambda" ] || pip_install "cargo-lambda==$CARGO_LAMBDA_VERSION"
  echo "$VENV/bin/cargo-lambda"
}

tools() {
  cargo_lambda >/dev/null
  if [ "${1:-}" = sam ] && [ ! -x "$VENV/bin/sam" ]; then
    pip_install "aws-sam-cli==$SAM_VERSION"
  fi
  if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
  fi
}

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$@"; else shasum -a 256 "$@"; fi
}

package() {
  local out=${1:?usage: scripts/build.sh package DIR} cl started
  tools
  cl=$(cargo_lambda)
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  rm -rf "$out/lambda"
  started=$(date +%s)
  local bins=()
  for f in "${FUNCTIONS[@]}"; do bins+=(--bin "$f"); done
  (
    cd "$ROOT"
    PATH="$VENV/bin:$PATH" "$cl" lambda build --release --arm64 --output-format zip --lambda-dir "$out/lambda" "${bins[@]}"
  )
  (
    cd "$out"
    rm -f SHA256SUMS
    for f in "${FUNCTIONS[@]}"; do
      [ -f "lambda/$f/bootstrap.zip" ] || { log "cargo-lambda left no lambda/$f/bootstrap.zip"; exit 1; }
      mv "lambda/$f/bootstrap.zip" "$f.zip"
    done
    rm -rf lambda
    sha256 "${FUNCTIONS[@]/%/.zip}" > SHA256SUMS
  )
  log "$(($(date +%s) - started)) s; in $out:"
  cat "$out/SHA256SUMS" >&2
}

case "${1:-}" in
  tools) shift; tools "$@" ;;
  package) shift; package "$@" ;;
  *) echo "usage: $0 tools [sam] | package DIR" >&2; exit 2 ;;
esac
