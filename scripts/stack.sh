#!/usr/bin/env bash
# The local stack on 127.0.0.1: LocalStack (SQS, DESIGN §9) on :4566 and
# three Debian docker-registry (distribution 2.8) instances — the source
# without auth on :5001, the target with htpasswd on :5002, and a target with
# Bearer token auth on :5003 whose token service (realm 127.0.0.1:5004) is
# the tests' own issuer (tests/src/token.rs), signing with a key made here.
#
#   scripts/stack.sh install   install what is missing (apt, uv, LocalStack venv)
#   scripts/stack.sh up        start what is not running, wait for health
#   scripts/stack.sh down      stop what `up` started, by PID
#   scripts/stack.sh status
#
# State lives in .local/ (git-ignored): venvs, registry storage, PID files,
# logs, and .local/stack/env with the endpoints and generated local secrets.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=$ROOT/.local
STACK=$LOCAL/stack
TOOLS=$LOCAL/tools
LS_VENV=$LOCAL/venv-localstack
INFRA_VENV=$LOCAL/venv-infra
MOTO_VENV=$LOCAL/venv-moto
SOURCE_PORT=${RELAY_SOURCE_PORT:-5001}
TARGET_PORT=${RELAY_TARGET_PORT:-5002}
LS_PORT=${RELAY_LOCALSTACK_PORT:-4566}
TOKEN_PORT=${RELAY_TOKEN_PORT:-5003}
ISSUER_PORT=${RELAY_TOKEN_ISSUER_PORT:-5004}
# Amazon ECR's control plane (LocalStack's community edition has none).
MOTO_PORT=${RELAY_MOTO_PORT:-5005}

log() { printf '[stack] %s\n' "$*" >&2; }

install() {
  local missing=()
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ! -x "$TOOLS/bin/uv" ]; then
    log "installing uv into .local/tools"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q uv
  fi
  if ! "$LS_VENV/bin/python" -c 'import localstack.runtime.main' 2>/dev/null; then
    log "installing LocalStack 4.13.1 into .local/venv-localstack (first time: a minute or two)"
    rm -rf "$LS_VENV"
    "$TOOLS/bin/uv" venv -q -p python3.11 "$LS_VENV"
    VIRTUAL_ENV=$LS_VENV "$TOOLS/bin/uv" pip install -q --exclude-newer 2026-02-10 "localstack-core[runtime]==4.13.1"
  fi
  if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
    log "installing moto 5.1.x (ECR's control plane for the tests) into .local/venv-moto"
    "$TOOLS/bin/uv" venv -q --allow-existing -p python3.11 "$MOTO_VENV"
    VIRTUAL_ENV=$MOTO_VENV "$TOOLS/bin/uv" pip install -q --exclude-newer 2026-10-01 "moto[server,ecr]>=5.1,<5.2"
  fi
  if [ ! -x "$INFRA_VENV/bin/cfn-lint" ] || [ ! -x "$INFRA_VENV/bin/sam" ] || [ ! -x "$INFRA_VENV/bin/cargo-lambda" ]; then
    log "installing cfn-lint, the SAM CLI and cargo-lambda into .local/venv-infra (template checks, Lambda-mode tests, make build)"
    "$TOOLS/bin/uv" venv -q --allow-existing -p python3.11 "$INFRA_VENV"
    VIRTUAL_ENV=$INFRA_VENV "$TOOLS/bin/uv" pip install -q "cfn-lint==1.58.0" "aws-sam-cli==1.170.0" "cargo-lambda==1.9.2"
  fi
}

alive() { [ -f "$STACK/$1.pid" ] && kill -0 "$(cat "$STACK/$1.pid")" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name url expected-status seconds
  local name=$1 url=$2 want=$3 secs=$4 code
  for ((i = 0; i < secs * 10; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
    [ "$code" = "$want" ] && return 0
    alive "$name" || { log "$name exited; last log lines:"; tail -n 20 "$STACK/$name.log" >&2; return 1; }
    sleep 0.1
  done
  log "$name not healthy after ${secs}s (last HTTP status $code)"; tail -n 20 "$STACK/$name.log" >&2
  return 1
}

registry_config() { # name port [htpasswd | token]
  local name=$1 port=$2 htpasswd=${3:-}
  # Each start begins empty: nothing depends on an earlier run's images,
  # and benchmark gigabytes do not pile up on the disk.
  rm -rf "$STACK/$name-data"
  mkdir -p "$STACK/$name-data"
  {
    echo "version: 0.1"
    echo "log: { level: warn, accesslog: { disabled: true } }"
    echo "storage:"
    echo "  filesystem: { rootdirectory: $STACK/$name-data }"
    echo "  delete: { enabled: true }"
    echo "  maintenance: { uploadpurging: { enabled: false } }"
    echo "http:"
    echo "  addr: 127.0.0.1:$port"
    echo "  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    if [ "$htpasswd" = token ]; then
      echo "auth:"
      echo "  token: { realm: http://127.0.0.1:$ISSUER_PORT/token, service: relay-token-registry, issuer: relay-test-issuer, rootcertbundle: $STACK/token.crt }"
    elif [ -n "$htpasswd" ]; then
      echo "auth:"
      echo "  htpasswd: { realm: harbor-relay-$name, path: $htpasswd }"
    fi
  } > "$STACK/$name.yml"
}

start_registry() { # name port expected-status [htpasswd]
  local name=$1 port=$2 want=$3
  if alive "$name"; then return 0; fi
  if port_busy "$port"; then log "port $port is taken by another process; stop it or set RELAY_${name^^}_PORT"; return 1; fi
  registry_config "$name" "$port" "${4:-}"
  setsid docker-registry serve "$STACK/$name.yml" > "$STACK/$name.log" 2>&1 < /dev/null &
  echo $! > "$STACK/$name.pid"
  wait_for "$name" "http://127.0.0.1:$port/v2/" "$want" 15
}

up() {
  install
  mkdir -p "$STACK"
  if [ ! -f "$STACK/env" ]; then
    # Secrets for the local stack only, made fresh per checkout.
    local target_pw webhook_auth
    target_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    webhook_auth="Bearer $(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    htpasswd -Bbc "$STACK/target.htpasswd" relay "$target_pw" 2>/dev/null
    cat > "$STACK/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$LS_PORT
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export RELAY_SOURCE_URL=http://127.0.0.1:$SOURCE_PORT
export RELAY_TARGET_URL=http://127.0.0.1:$TARGET_PORT
export RELAY_TARGET_USER=relay
export CLUSTER1_PASSWORD='$target_pw'
export RELAY_WEBHOOK_AUTH='$webhook_auth'
ENV
  fi
  if [ ! -f "$STACK/token.key.der" ]; then
    # The token issuer's signing key (P-256) and its self-signed certificate,
    # which the token-auth registry trusts.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj /CN=relay-test-issuer -keyout "$STACK/token.key" -out "$STACK/token.crt" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$STACK/token.key" -outform DER -out "$STACK/token.key.der"
    openssl x509 -in "$STACK/token.crt" -outform DER -out "$STACK/token.crt.der"
  fi
  if ! grep -q RELAY_TOKEN_TARGET_URL "$STACK/env"; then
    cat >> "$STACK/env" <<ENV
export RELAY_TOKEN_TARGET_URL=http://127.0.0.1:$TOKEN_PORT
export RELAY_TOKEN_ISSUER_ADDR=127.0.0.1:$ISSUER_PORT
export RELAY_TOKEN_KEY=$STACK/token.key.der
export RELAY_TOKEN_CERT=$STACK/token.crt.der
ENV
  fi
  if ! grep -q AWS_ENDPOINT_URL_ECR "$STACK/env"; then
    echo "export AWS_ENDPOINT_URL_ECR=http://127.0.0.1:$MOTO_PORT" >> "$STACK/env"
  fi
  start_registry source "$SOURCE_PORT" 200
  start_registry target "$TARGET_PORT" 401 "$STACK/target.htpasswd"
  start_registry token "$TOKEN_PORT" 401 token
  if ! alive localstack; then
    if port_busy "$LS_PORT"; then log "port $LS_PORT is taken by another process"; return 1; fi
    mkdir -p "$STACK/localstack"
    (
      cd "$STACK/localstack"
      GATEWAY_SERVER=hypercorn GATEWAY_LISTEN=127.0.0.1:$LS_PORT LOCALSTACK_HOST=127.0.0.1:$LS_PORT \
        SQS_ENDPOINT_STRATEGY=path SERVICES=sqs,secretsmanager,ssm,logs,cloudformation,s3,iam,sts \
        DNS_ADDRESS=0 FILESYSTEM_ROOT=$STACK/localstack DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
        setsid "$LS_VENV/bin/python" -m localstack.runtime.main > "$STACK/localstack.log" 2>&1 < /dev/null &
      echo $! > "$STACK/localstack.pid"
    )
    wait_for localstack "http://127.0.0.1:$LS_PORT/_localstack/health" 200 60
  fi
  # The bucket of the relay's record of the tags it wrote (reconcile deletes
  # only those); LocalStack keeps nothing across restarts, and a PUT of a
  # bucket it has answers 200 again.
  curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$LS_PORT/relay-written"
  grep -q RELAY_RECORD_BUCKET "$STACK/env" || echo "export RELAY_RECORD_BUCKET=relay-written" >> "$STACK/env"
  if ! alive moto; then
    if port_busy "$MOTO_PORT"; then log "port $MOTO_PORT is taken by another process; set RELAY_MOTO_PORT"; return 1; fi
    setsid "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" > "$STACK/moto.log" 2>&1 < /dev/null &
    echo $! > "$STACK/moto.pid"
    wait_for moto "http://127.0.0.1:$MOTO_PORT/moto-api/" 200 30
  fi
  log "up: source :$SOURCE_PORT, target :$TARGET_PORT (htpasswd), token target :$TOKEN_PORT, LocalStack :$LS_PORT, ECR (moto) :$MOTO_PORT — env in .local/stack/env"
}

stop_one() {
  local name=$1 pid
  [ -f "$STACK/$name.pid" ] || return 0
  pid=$(cat "$STACK/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STACK/$name.pid"
}

down() {
  for n in moto localstack token target source; do stop_one "$n"; done
  log "down"
}

status() {
  for n in source target token localstack moto; do
    if alive "$n"; then echo "$n: running (pid $(cat "$STACK/$n.pid"))"; else echo "$n: stopped"; fi
  done
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
