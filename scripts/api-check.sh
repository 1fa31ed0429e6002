#!/usr/bin/env bash
# API conformance check: runs schemathesis against the release server's own OpenAPI document.
#
# Installs a pinned schemathesis into a venv OUTSIDE the repository (default
# $HOME/.cache/shiftserve/api-check-venv, override with API_CHECK_VENV), starts `shiftserve` on a
# free loopback port with the bundled model repository, runs schemathesis with every check
# (5xx, response not matching the schema, undocumented status code, schema-valid request
# refused, schema-invalid request accepted, ...) for a bounded time, and exits non-zero if
# schemathesis reports any failure or the server does not become ready.
#
#   scripts/api-check.sh                       # builds the release server (CARGO_TARGET_DIR)
#   scripts/api-check.sh target/release/shiftserve   # uses an already built binary
#
# Knobs: API_CHECK_MAX_TIME (seconds of fuzzing + stateful testing, default 120),
# API_CHECK_MAX_EXAMPLES (test cases per operation and phase, default 30), API_CHECK_SEED
# (default 1), API_CHECK_NO_INSTALL=1 (fail instead of installing schemathesis; scripts/test sets
# it under SHIFTSERVE_NO_INSTALL=1). Schemathesis runs in a temporary directory, so its example database and
# Hypothesis' cache never land in the repository and every run starts clean, as on CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${API_CHECK_VENV:-$HOME/.cache/shiftserve/api-check-venv}"
SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${API_CHECK_MAX_EXAMPLES:-30}"
MAX_TIME="${API_CHECK_MAX_TIME:-120}"
SEED="${API_CHECK_SEED:-1}"

case "$VENV" in
  "$ROOT"/*) echo "api-check: the venv must live outside the repository ($VENV)" >&2; exit 2 ;;
esac
installed="$("$VENV/bin/schemathesis" --version 2>/dev/null || true)"
if [ "$installed" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
  if [ "${API_CHECK_NO_INSTALL:-0}" = 1 ]; then
    echo "api-check: schemathesis $SCHEMATHESIS_VERSION is not in $VENV (found: ${installed:-none}) and installing is disabled" >&2
    exit 2
  fi
  echo "api-check: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

if [ $# -ge 1 ]; then
  BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
  (cd "$ROOT" && cargo build --release -p server --quiet)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/shiftserve"
  case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
fi
[ -x "$BIN" ] || { echo "api-check: no server binary at $BIN" >&2; exit 2; }

WORK="$(mktemp -d -t shiftserve-api-check.XXXXXX)"
LOG="$WORK/server.log"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BIN" --http-address 127.0.0.1 --http-port "$PORT" --grpc-port off \
  --model-repository "$ROOT/models/repository" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  if [ "${keep_log:-0}" = 1 ]; then
    cp "$LOG" "${TMPDIR:-/tmp}/shiftserve-api-check-server.log" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 600); do
  if curl -fsS "$BASE/v2/health/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "api-check: server exited; log:" >&2; cat "$LOG" >&2; exit 1
  fi
  sleep 0.1
done
curl -fsS "$BASE/v2/health/ready" >/dev/null || { echo "api-check: server not ready" >&2; cat "$LOG" >&2; exit 1; }

# Random model names only ever reach the 404 branch. The read-only model routes (metadata,
# readiness, config, statistics) get a model the server really serves, so their 200 bodies are
# validated against the document too; the stateful phase then carries that name into the
# inference routes. There a schema-valid request can still be meaningless (a tensor whose data
# does not match its shape, bytes that are no image): 400/415 are the right answers, so for
# those four operations "schema-valid request rejected" also accepts 400/413/415, and a 504
# (the generated deadline can be 1 ms) is not counted as a server error. Every other check
# (status codes, bodies, content types, 5xx other than 504, ...) stays on for them.
MODEL="$(curl -fsS "$BASE/v1/models" | python3 -c 'import json, sys; m = json.load(sys.stdin)["models"]; print(m[0]["name"] if m else "")')"
[ -n "$MODEL" ] || { echo "api-check: the server serves no model" >&2; exit 1; }
VERSION="$(curl -fsS "$BASE/v2/models/$MODEL" | python3 -c 'import json, sys; print(json.load(sys.stdin)["versions"][0])')"
cat >"$WORK/schemathesis.toml" <<TOML
[[operations]]
include-method = "GET"
include-path-regex = '^/v2/models/\{m\}'
parameters = { "path.m" = "$MODEL", "path.v" = "$VERSION" }

[[operations]]
include-method = "POST"
include-path-regex = '^/v[12]/models/\{m\}(/versions/\{v\})?/(predict|infer)$'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "415", "429", "5xx"]
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]
TOML

t0=$SECONDS
status=0
(cd "$WORK" && "$VENV/bin/schemathesis" --no-color --config-file "$WORK/schemathesis.toml" \
  run "$BASE/api-doc/openapi.json" \
  --url "$BASE" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --max-time "$MAX_TIME" \
  --request-timeout 30 \
  --workers 1 \
  --suppress-health-check all) || status=$?
if [ "$status" -ne 0 ]; then
  keep_log=1
  echo "api-check: schemathesis reported failures after $((SECONDS - t0)) s (server log: ${TMPDIR:-/tmp}/shiftserve-api-check-server.log)" >&2
else
  echo "api-check: OpenAPI conformance ok ($((SECONDS - t0)) s of schemathesis)"
fi
exit "$status"
