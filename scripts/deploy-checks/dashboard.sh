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
dc_start_prometheus
# First scrape before any traffic, then one good and one malformed request per model, then wait
# until a scrape has them: every rate() in the dashboard then has two points and a value.
"$DC_PY" "$DC_DIR/prom_wait.py" "$PROM" 'up{job="shiftserve"}' 1 30 || dc_fail "Prometheus never scraped the server"
dc_log "exercising every model once (good and malformed input) so every series moves"
dc_exercise "$SPEC"
N=$(tr ',' '\n' <<<"$SPEC" | wc -l)
"$DC_PY" "$DC_DIR/prom_wait.py" "$PROM" 'sum(shiftserve_requests_total)' "$((2 * N))" 30 ||
  dc_fail "Prometheus never saw the exercise requests"
# Series born with the exercise (e.g. the first error of a reason) need a second sample for rate().
"$DC_PY" "$DC_DIR/prom_wait.py" "$PROM" 'min(count_over_time(shiftserve_requests_total[1m]))' 2 30 ||
  dc_fail "Prometheus did not scrape twice after the exercise"
"$DC_PY" "$DC_DIR/dashboard.py" --metrics-url "$SERVER_URL/metrics" --prometheus "$PROM" --require-data ||
  dc_fail "dashboard/provisioning/rules check failed"
# Self-test: the same check must reject a dashboard with a misspelt metric and a misspelt label.
sed -e 's/shiftserve_request_duration_seconds_bucket/shiftserve_request_duration_second_bucket/' \
    -e 's/sum by (model, reason)/sum by (model, reasn)/' \
    "$DC_ROOT/deploy/grafana/dashboards/shiftserve.json" >"$DC_WORK/broken.json"
if "$DC_PY" "$DC_DIR/dashboard.py" --metrics-url "$SERVER_URL/metrics" --dashboard "$DC_WORK/broken.json" \
    >"$DC_WORK/broken.out" 2>&1; then
  dc_fail "self-test: a dashboard with a misspelt metric and label passed the check"
fi
grep -q 'metric shiftserve_request_duration_second_bucket is not exported' "$DC_WORK/broken.out" &&
  grep -q 'label `reasn`' "$DC_WORK/broken.out" ||
  { cat "$DC_WORK/broken.out" >&2; dc_fail "self-test: the misspellings were not both reported"; }
echo "  self-test: a misspelt metric and a misspelt label are both reported"
dc_log "PASS: dashboard, provisioning and rules reference only exported metrics and labels"
