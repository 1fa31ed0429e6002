# shellcheck shell=bash
# Shared helpers for scripts/deploy-checks/*.sh (sourced, not run).
#
# Network rule: everything here talks to 127.0.0.1 only; every wait loop is bounded.

set -euo pipefail

DC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DC_DIR="$DC_ROOT/scripts/deploy-checks"
# Tools live in their own venv outside the repository (tools.sh creates it).
DEPLOY_TOOLS=${DEPLOY_TOOLS:-/opt/shiftserve-deploy-tools}
DC_PY="$DEPLOY_TOOLS/bin/python"
K6="$DEPLOY_TOOLS/bin/k6"

dc_log() { printf '[%s] %s\n' "$(basename "$0")" "$*"; }
dc_fail() { printf '[%s] FAIL: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Work directory removed on exit; processes registered with dc_track are stopped (by pid) first.
DC_PIDS=()
DC_WORK=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
dc_cleanup() {
  local pid
  for pid in "${DC_PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "${DC_KEEP_WORK:-}" ]; then
    echo "work directory kept: $DC_WORK"
  else
    rm -rf "$DC_WORK"
  fi
}
trap dc_cleanup EXIT
dc_track() { DC_PIDS+=("$1"); }

dc_require_tools() {
  [ -x "$K6" ] && [ -x "$DC_PY" ] && command -v promtool >/dev/null && command -v prometheus >/dev/null ||
    dc_fail "tools missing: run scripts/deploy-checks/tools.sh first"
}

# A free TCP port on the loopback interface.
dc_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# dc_wait_http URL SECONDS [EXPECTED_STATUS [PID]]: poll until the URL answers (bounded); gives
# up early when PID (the process expected to answer) has exited.
dc_wait_http() {
  local url=$1 secs=$2 want=${3:-200} pid=${4:-} code deadline
  deadline=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)
    [ "$code" = "$want" ] && return 0
    sleep 0.5
  done
  return 1
}

# dc_start_server BINARY REPOSITORY [EXTRA ARGS...]: starts shiftserve on a free loopback port, waits until
# /v2/health/ready answers 200. Sets SERVER_PORT, SERVER_URL, SERVER_PID, SERVER_LOG, and
# SERVER_GRPC_PORT (a free port too) when the server has a gRPC listener.
dc_start_server() {
  local bin=$1 repo=$2 help
  shift 2
  [ -x "$bin" ] || dc_fail "server binary not executable: $bin"
  [ -d "$repo" ] || dc_fail "model repository not found: $repo"
  SERVER_PORT=$(dc_free_port)
  SERVER_URL="http://127.0.0.1:$SERVER_PORT"
  SERVER_LOG="$DC_WORK/shiftserve.log"
  local args=(serve --http-port "$SERVER_PORT" --model-repository "$repo")
  help=$("$bin" serve --help 2>&1 || true)
  # Bind to loopback explicitly when the server lets us choose the address.
  if grep -q -- '--http-address' <<<"$help"; then args+=(--http-address 127.0.0.1); fi
  SERVER_GRPC_PORT=
  if grep -q -- '--grpc-port' <<<"$help"; then
    SERVER_GRPC_PORT=$(dc_free_port)
    args+=(--grpc-port "$SERVER_GRPC_PORT")
  fi
  args+=("$@")
  dc_log "starting: $bin ${args[*]}"
  # Per-request logs would cost CPU under load and bury the interesting lines.
  SHIFTSERVE_LOG_LEVEL=${DC_SERVER_LOG_LEVEL:-warn,shiftserve::serve=info,shiftserve::repository=info} \
    "$bin" "${args[@]}" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  dc_track "$SERVER_PID"
  if ! dc_wait_http "$SERVER_URL/v2/health/ready" "${SERVER_READY_TIMEOUT:-120}" 200 "$SERVER_PID"; then
    dc_server_log_tail
    dc_fail "server did not become ready on $SERVER_URL (it exited, or ${SERVER_READY_TIMEOUT:-120} s passed)"
  fi
  dc_log "server ready on $SERVER_URL (pid $SERVER_PID)"
}

dc_server_log_tail() {
  echo "---- server log (last lines) ----" >&2
  sed 's/\x1b\[[0-9;]*m//g' "$SERVER_LOG" | tail -n 15 | cut -c1-300 >&2 || true
}

# The k6 MODELS spec for the models the running server serves: `name=fixture`, the fixture chosen
# from each model's task as reported by GET /v1/models (image -> shirt.png, audio -> a WAV).
dc_models_spec() {
  curl -fsS -m 5 "$SERVER_URL/v1/models" | "$DC_PY" "$DC_DIR/models_spec.py"
}

# dc_run_k6 MODELS_SPEC DURATION RATE SUMMARY_PATH [extra env...]: runs the bundled k6 script.
dc_run_k6() {
  local spec=$1 duration=$2 rate=$3 summary=$4
  shift 4
  dc_log "k6: MODELS=$spec RATE=$rate/s per model DURATION=$duration"
  (cd "$DC_ROOT/loadtest" &&
    env HOST="$SERVER_URL" MODELS="$spec" RATE="$rate" DURATION="$duration" SUMMARY="$summary" "$@" \
      timeout 300 "$K6" run --quiet --no-color --no-usage-report ${DC_K6_ARGS:-} "$DC_ROOT/loadtest/shiftserve.js")
}

# dc_start_prometheus: runs Debian's prometheus with deploy/prometheus/prometheus.yml, only the
# scrape targets rewritten to the running server / itself on loopback and the rule path made
# absolute. Needs dc_start_server first. Sets PROM_PORT, PROM (base URL), PROM_PID.
dc_start_prometheus() {
  local cfg="$DC_ROOT/deploy/prometheus/prometheus.yml" test_cfg="$DC_WORK/prometheus.yml"
  PROM_PORT=$(dc_free_port)
  "$DC_PY" - "$cfg" "$test_cfg" "127.0.0.1:$SERVER_PORT" "127.0.0.1:$PROM_PORT" "$DC_ROOT/deploy/prometheus/rules" <<'PY'
import sys, yaml
src, dst, server, prom, rules = sys.argv[1:]
cfg = yaml.safe_load(open(src))
jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
assert "shiftserve" in jobs, "deploy/prometheus/prometheus.yml has no `shiftserve` job"
for sc in jobs["shiftserve"]["static_configs"]:
    sc["targets"] = [server]
for sc in jobs.get("prometheus", {}).get("static_configs", []):
    sc["targets"] = [prom]
cfg["rule_files"] = [f"{rules}/*.yml"]
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
print(f"  test config: shiftserve -> {server}, scrape interval "
      f"{jobs['shiftserve'].get('scrape_interval', cfg['global']['scrape_interval'])}")
PY
  promtool check config "$test_cfg" >/dev/null || dc_fail "the loopback variant of the Prometheus config does not check"
  dc_log "starting prometheus on 127.0.0.1:$PROM_PORT"
  prometheus --config.file="$test_cfg" --storage.tsdb.path="$DC_WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$DC_WORK/prometheus.log" 2>&1 &
  PROM_PID=$!
  dc_track "$PROM_PID"
  PROM="http://127.0.0.1:$PROM_PORT"
  dc_wait_http "$PROM/-/ready" 60 200 "$PROM_PID" || { tail -n 20 "$DC_WORK/prometheus.log" >&2; dc_fail "prometheus not ready"; }
}

# dc_exercise MODELS_SPEC: one good request per model and one malformed one (so error series
# exist too); prints the status codes. Bounded: 2 requests per model, 10 s timeout each.
dc_exercise() {
  local spec=$1 item model fixture ctype code
  for item in ${spec//,/ }; do
    model=${item%%=*} fixture=${item#*=}
    case $fixture in *.png) ctype=image/png ;; *.wav) ctype=audio/wav ;; *) ctype=application/octet-stream ;; esac
    code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' -H "Content-Type: $ctype" \
      --data-binary @"$DC_ROOT/loadtest/fixtures/$fixture" "$SERVER_URL/v1/models/$model/predict")
    [ "$code" = 200 ] || dc_fail "POST $fixture to $model answered $code, expected 200"
    code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' -H "Content-Type: $ctype" \
      --data-binary 'not a real file' "$SERVER_URL/v1/models/$model/predict")
    case $code in 400|415) ;; *) dc_fail "a malformed body to $model answered $code, expected 400/415" ;; esac
    echo "  $model: $fixture -> 200, garbage -> $code"
  done
}
