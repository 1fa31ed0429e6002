#!/usr/bin/env bash
# Check 1: the bundled k6 script against a real shiftserve.
#   scripts/deploy-checks/k6.sh <shiftserve binary> <model repository>
# Starts the server on a free loopback port, runs loadtest/shiftserve.js with one
# constant-arrival-rate scenario per served model (DC_RATE req/s each, DC_DURATION, defaults
# 5/s and 20s), and requires: k6 exits 0 (every threshold passed), summary.json is written, and
# it reports as many successful requests per model as the schedule asked for (minus a margin).
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -eq 2 ] || dc_fail "usage: $0 <shiftserve binary> <model repository>"
dc_require_tools
BIN=$1 REPO=$2
RATE=${DC_RATE:-5}
DURATION=${DC_DURATION:-20s}

dc_start_server "$BIN" "$REPO"
SPEC=$(dc_models_spec) || dc_fail "could not derive the model list from $SERVER_URL/v1/models"
dc_log "models served: $SPEC"
SUMMARY="$DC_WORK/summary.json"
if ! dc_run_k6 "$SPEC" "$DURATION" "$RATE" "$SUMMARY"; then
  dc_server_log_tail
  dc_fail "k6 run failed (a threshold was crossed or the script errored)"
fi
[ -s "$SUMMARY" ] || dc_fail "k6 wrote no summary.json"

"$DC_PY" - "$SUMMARY" "$SPEC" "$RATE" "$DURATION" <<'PY'
import json, re, sys
path, spec, rate, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
data = json.load(open(path))
m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
secs = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]
expected = rate * secs
metrics = data["metrics"]
failed = [f"{name} {expr}" for name, mt in metrics.items() for expr, t in (mt.get("thresholds") or {}).items() if not t["ok"]]
if failed:
    sys.exit("summary.json lists failed thresholds: " + "; ".join(failed))
n_thr = sum(len(mt.get("thresholds") or {}) for mt in metrics.values())
for item in spec.split(","):
    model = item.split("=")[0]
    scen = re.sub(r"[^A-Za-z0-9_]", "_", model)
    d = metrics.get(f"http_req_duration{{scenario:{scen}}}")
    if d is None:
        sys.exit(f"summary.json has no latency for scenario {scen}")
    v = d["values"]
    if v["count"] < 0.9 * expected:
        sys.exit(f"{model}: only {v['count']} requests, expected about {expected:.0f}")
    print(f"  {model:<14} {int(v['count']):>5} requests  p50 {v['med']:.1f} ms  p95 {v['p(95)']:.1f} ms  p99 {v['p(99)']:.1f} ms")
checks = metrics["checks"]["values"]
print(f"  checks: {checks['passes']} passed, {checks['fails']} failed; thresholds: {n_thr} passed")
PY
dc_log "PASS: k6 thresholds held for every model; summary.json written"
