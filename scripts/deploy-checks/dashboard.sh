#!/usr/bin/env bash
# Check 3: the Grafana dashboard + provisioning (and the Prometheus rules) name only metrics and
# labels that a running shiftserve exports, and a real Prometheus accepts every expression.
#   scripts/deploy-checks/dashboard.sh <shiftserve binary> <model repository>
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -eq 2 ] || dc_fail "usage: $0 <shiftserve binary> <model repository>"
dc_require_tools
dc_start_server "$1" "$2"
SPEC=$(dc_models_spec) || dc_fail "could not derive the model list from $SERVER_URL/v1/models"
dc_log "exercising every model once (good and malformed input) so every series exists"
dc_exercise "$SPEC"
dc_start_prometheus
# Let Prometheus scrape at least twice so rate() has two points (bounded wait).
sleep 11
"$DC_PY" "$DC_DIR/dashboard.py" --metrics-url "$SERVER_URL/metrics" --prometheus "$PROM" ||
  dc_fail "dashboard/provisioning/rules check failed"
dc_log "PASS: dashboard, provisioning and rules reference only exported metrics and labels"
