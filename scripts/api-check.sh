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
# (default 1). Schemathesis runs in a temporary directory, so its example database and
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
"$BIN" --http-address 127.0.0.1 --http-port "$PORT" \
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

t0=$SECONDS
status=0
(cd "$WORK" && "$VENV/bin/schemathesis" --no-color run "$BASE/api-doc/openapi.json" \
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
