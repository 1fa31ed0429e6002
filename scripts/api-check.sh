#!/usr/bin/env bash
# API conformance check: runs schemathesis against the release server's own OpenAPI document.
# Installs schemathesis into a venv OUTSIDE the repo (default /opt/qa-venv, override with
# API_CHECK_VENV), builds and starts `shiftserve` on a free loopback port with the bundled model
# repository, runs a bounded schemathesis run (API_CHECK_MAX_EXAMPLES, default 30), and exits
# non-zero if schemathesis reports any failure (5xx, response not matching the schema,
# undocumented status code, ...) or the server does not become ready.
#
#   scripts/api-check.sh            # from anywhere; uses CARGO_TARGET_DIR if set
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${API_CHECK_VENV:-/opt/qa-venv}"
MAX_EXAMPLES="${API_CHECK_MAX_EXAMPLES:-30}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

case "$VENV" in
  "$ROOT"/*) echo "api-check: the venv must live outside the repository ($VENV)" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'schemathesis>=4,<5'
fi

(cd "$ROOT" && cargo build --release -p server --quiet)
BIN="$TARGET_DIR/release/shiftserve"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp -t shiftserve-api-check.XXXXXX.log)"
"$BIN" --http-address 127.0.0.1 --http-port "$PORT" \
  --model-repository "$ROOT/models/repository" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
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

status=0
"$VENV/bin/schemathesis" run "$BASE/api-doc/openapi.json" \
  --url "$BASE" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --seed 1 \
  --max-time 300 \
  --request-timeout 30 \
  --workers 1 \
  --suppress-health-check all || status=$?
if [ "$status" -ne 0 ]; then
  echo "api-check: schemathesis reported failures (server log: $LOG)" >&2
else
  rm -f "$LOG"
fi
exit "$status"
