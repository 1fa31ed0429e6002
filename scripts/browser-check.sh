#!/usr/bin/env bash
# Browser test of the web UI (the playground at / and the API reference at /docs) in Debian's
# headless Chromium, driven by Selenium, against a real `shiftserve serve` on the bundled models
# with an API key. What it checks is in scripts/browser_check.py; screenshots land in
# $BROWSER_ARTIFACTS (default target/browser-artifacts/).
#
#   scripts/browser-check.sh                              # builds the release server
#   scripts/browser-check.sh target/release/shiftserve    # uses an already built binary
#
# Installs (unless BROWSER_CHECK_NO_INSTALL=1; scripts/test sets it under SHIFTSERVE_NO_INSTALL=1):
# the Debian packages chromium, chromium-driver and fonts-dejavu-core, and a pinned Selenium into
# a venv OUTSIDE the repository ($HOME/.cache/shiftserve/browser-check-venv, override with
# BROWSER_CHECK_VENV). Selenium never downloads a driver or a browser: it is pointed at
# /usr/bin/chromedriver and /usr/bin/chromium. The whole check is bounded by
# BROWSER_CHECK_TIMEOUT seconds (default 180); it takes about 30 s with a built server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BROWSER_CHECK_VENV:-$HOME/.cache/shiftserve/browser-check-venv}"
SELENIUM_VERSION="4.50.0"
ART="${BROWSER_ARTIFACTS:-$ROOT/target/browser-artifacts}"
TIMEOUT="${BROWSER_CHECK_TIMEOUT:-180}"

case "$VENV" in
  "$ROOT"/*) echo "browser-check: the venv must live outside the repository ($VENV)" >&2; exit 2 ;;
esac

if [ "${BROWSER_CHECK_NO_INSTALL:-0}" != 1 ]; then
  if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
    echo "browser-check: installing chromium and chromium-driver (apt)"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
      --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
  fi
  installed="$("$VENV/bin/python" -c 'import selenium; print(selenium.__version__)' 2>/dev/null || true)"
  if [ "$installed" != "$SELENIUM_VERSION" ]; then
    echo "browser-check: installing selenium $SELENIUM_VERSION into $VENV"
    mkdir -p "$(dirname "$VENV")"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "selenium==$SELENIUM_VERSION"
  fi
fi
for f in /usr/bin/chromium /usr/bin/chromedriver "$VENV/bin/python"; do
  [ -x "$f" ] || { echo "browser-check: $f is missing (installing is disabled)" >&2; exit 2; }
done

if [ $# -ge 1 ]; then
  BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
  (cd "$ROOT" && cargo build --release -p server --quiet)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/shiftserve"
  case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
fi
[ -x "$BIN" ] || { echo "browser-check: no server binary at $BIN" >&2; exit 2; }

WORK="$(mktemp -d -t shiftserve-browser-check.XXXXXX)"
LOG="$WORK/server.log"
KEY="browser-check-$RANDOM$RANDOM"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BIN" serve --http-address 127.0.0.1 --http-port "$PORT" \
  --model-repository "$ROOT/models/repository" --api-key "$KEY" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 600); do
  if curl -fsS "$BASE/v2/health/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "browser-check: server exited; log:" >&2; cat "$LOG" >&2; exit 1
  fi
  sleep 0.1
done
curl -fsS "$BASE/v2/health/ready" >/dev/null || { echo "browser-check: server not ready" >&2; cat "$LOG" >&2; exit 1; }

rm -rf "$ART"
mkdir -p "$ART"
status=0
SE_OFFLINE=true SE_AVOID_STATS=true timeout --kill-after=10 "$TIMEOUT" \
  "$VENV/bin/python" "$ROOT/scripts/browser_check.py" \
  --url "$BASE" --api-key "$KEY" --artifacts "$ART" \
  --image "$ROOT/loadtest/fixtures/shirt.png" --wav "$ROOT/loadtest/fixtures/intent.wav" \
  --work "$WORK" || status=$?
if [ "$status" -ne 0 ]; then
  cp "$LOG" "$ART/server.log" 2>/dev/null || true
  [ "$status" -ne 124 ] || echo "browser-check: timed out after $TIMEOUT s" >&2
fi
echo "browser-check: screenshots in $ART"
exit "$status"
