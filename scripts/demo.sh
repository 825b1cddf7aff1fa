#!/usr/bin/env bash
# `make demo`: the whole pipeline on this machine, end to end.
# Harbor's side is played by a plain registry on :5001 and a curl POST of
# the exact payload Harbor sends; everything else is the real thing:
# webhook binary → LocalStack SQS → worker binary → htpasswd registry :5002.
# Exits 0 only when the destination holds the same digests as the source.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEMO=$ROOT/.local/demo
PORT=${RELAY_DEMO_PORT:-8080}
mkdir -p "$DEMO"
rm -f "$DEMO"/*.log

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
pids=()
cleanup() {
  local code=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/stack.sh down
  if [ $code -ne 0 ]; then
    echo "demo FAILED (exit $code); logs in .local/demo/ and .local/stack/" >&2
  fi
  exit $code
}
trap cleanup EXIT

say "Starting the local stack (LocalStack SQS, source registry :5001, target registry :5002)"
scripts/stack.sh up
# shellcheck disable=SC1091
source .local/stack/env

say "Building webhook, worker and the fixture tool"
cargo build -q -p webhook -p worker -p relay-tests --bins
# Wherever CARGO_TARGET_DIR or a cargo config puts the build.
BIN=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug

QUEUE=$("$BIN/relay-fixture" create-queue demo-copy)
echo "copy queue: $QUEUE"

say "Starting webhook (127.0.0.1:$PORT) and worker, configured by examples/config.yaml"
export RELAY_CONFIG=$ROOT/examples/config.yaml RELAY_QUEUE_URL=$QUEUE RELAY_LISTEN=127.0.0.1:$PORT
"$BIN/webhook" > "$DEMO/webhook.log" 2>&1 & pids+=($!)
"$BIN/worker" > "$DEMO/worker.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { echo "webhook did not start:"; cat "$DEMO/webhook.log"; exit 1; }

REPO=demo/hello-$(date +%s)
TAG=v1
say "Pushing a generated multi-arch OCI image to the source: $REPO:$TAG"
"$BIN/relay-fixture" push-image "$REPO" "$TAG" oci-index 2 2 1048576 > "$DEMO/pushed.json"
DIGEST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["digest"])' "$DEMO/pushed.json")
echo "index digest: $DIGEST"

say "Harbor delivers PUSH_ARTIFACT to the webhook"
"$BIN/relay-fixture" harbor-event "$REPO" "$TAG" "$DIGEST" > "$DEMO/event.json"
STATUS=$(curl -s -o "$DEMO/reply.json" -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/" \
  -H 'Content-Type: application/json' -H "Authorization: $RELAY_WEBHOOK_AUTH" --data-binary @"$DEMO/event.json")
echo "webhook answered $STATUS: $(cat "$DEMO/reply.json")"
[ "$STATUS" = 202 ] || exit 1

say "Waiting for the worker to replicate"
START=$(date +%s.%N)
"$BIN/relay-fixture" wait-target "$REPO" "$TAG" 60
WAITED=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$START" "$(date +%s.%N)")

say "Checking with skopeo: index and every child manifest"
SKOPEO=(skopeo inspect --raw --tls-verify=false)
src_root=$("${SKOPEO[@]}" "docker://127.0.0.1:5001/$REPO:$TAG" | sha256sum | cut -d' ' -f1)
dst_root=$("${SKOPEO[@]}" --creds "relay:$CLUSTER1_PASSWORD" "docker://127.0.0.1:5002/$REPO:$TAG" | sha256sum | cut -d' ' -f1)
echo "  index  source sha256:$src_root  target sha256:$dst_root"
[ "sha256:$dst_root" = "$DIGEST" ] && [ "$src_root" = "$dst_root" ] || { echo "index digests differ"; exit 1; }
for child in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["children"]))' "$DEMO/pushed.json"); do
  got=$("${SKOPEO[@]}" --creds "relay:$CLUSTER1_PASSWORD" "docker://127.0.0.1:5002/$REPO@$child" | sha256sum | cut -d' ' -f1)
  echo "  child  $child  target sha256:$got"
  [ "sha256:$got" = "$child" ] || { echo "child digest differs"; exit 1; }
done

say "Checking with the program: every manifest and blob, source vs target"
"$BIN/relay-fixture" compare "$REPO" "$TAG"

say "Summary"
python3 - "$DEMO/worker.log" "$WAITED" "$REPO" "$TAG" <<'PY'
import json, sys
done = [json.loads(l) for l in open(sys.argv[1]) if '"task done"' in l]
if not done:
    sys.exit("the worker logged no finished task")
t = done[-1]
print(f"  replicated {sys.argv[3]}:{sys.argv[4]} to cluster1-registry in {sys.argv[2]} s after the webhook answered")
print(f"  worker: outcome={t.get('outcome')} bytes={t.get('bytes')} blobs copied={t.get('blobs_copied')} "
      f"skipped={t.get('blobs_skipped')} manifests pushed={t.get('manifests_pushed')} in {t.get('duration_ms')} ms")
PY
echo
echo "demo OK: the destination holds the same index, children and blobs as the source."
