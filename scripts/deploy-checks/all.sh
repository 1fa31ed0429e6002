#!/usr/bin/env bash
# Every deployment / load-test check, against the real tools. Called from .ci/run:
#   scripts/deploy-checks/all.sh <shiftserve binary> <model repository>
# Installs its tools (tools.sh), then runs each check in its own process and prints
# "N passed, M failed"; exits non-zero when any check failed.
# All traffic stays on 127.0.0.1; every load run is bounded in rate and time (about 3 minutes total).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ $# -ne 2 ]; then
  echo "usage: $0 <shiftserve binary> <model repository>" >&2
  exit 2
fi
BIN=$(realpath "$1") REPO=$(realpath "$2")

bash "$HERE/tools.sh" || { echo "deploy-checks: installing tools failed" >&2; exit 1; }

passed=0 failed=0 failures=()
run() {
  local name=$1
  shift
  echo
  echo "==== deploy-check: $name ===="
  local t0=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "==== $name: ok ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "==== $name: FAILED ($((SECONDS - t0)) s)"
  fi
}

run dockerfile bash "$HERE/dockerfile.sh"
run compose    bash "$HERE/compose.sh"
run k8s        bash "$HERE/k8s.sh"
run kserve     bash "$HERE/kserve.sh" "$BIN" "$REPO"
run k6         bash "$HERE/k6.sh" "$BIN" "$REPO"
run prometheus bash "$HERE/prometheus.sh" "$BIN" "$REPO"
run dashboard  bash "$HERE/dashboard.sh" "$BIN" "$REPO"
run entrypoints bash "$HERE/entrypoints.sh" "$BIN" "$REPO"
run overload   bash "$HERE/overload.sh" "$BIN" "$REPO"
run tritonclient bash "$HERE/tritonclient.sh" "$BIN" "$REPO"

echo
[ $failed -eq 0 ] || echo "deploy-checks failed: ${failures[*]}"
echo "deploy-checks: $passed passed, $failed failed"
[ $failed -eq 0 ]
