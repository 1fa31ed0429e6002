#!/usr/bin/env bash
# Check 2: a real Prometheus (Debian's package) against a real shiftserve.
#   scripts/deploy-checks/prometheus.sh <shiftserve binary> <model repository>
# - promtool check config deploy/prometheus/prometheus.yml, promtool check rules on its rules,
#   promtool test rules on deploy/prometheus/tests (synthetic series: p95 recording rule value,
#   shedding / server-error / not-ready / load-failure alerts fire when and only when they should);
# - promtool check metrics on a scrape of /metrics (lint findings are allowed only for the
#   Triton-compatible names, whose spelling Triton fixed: nv_inference_count, ...);
# - Prometheus runs with deploy/prometheus/prometheus.yml, only the targets rewritten to loopback
#   ports and the rule path made absolute; k6 puts load on every model; then PromQL through
#   /api/v1/query must give a finite per-model p95 latency from the histograms, the recording
#   rules must hold the same, every rule must evaluate without error, and the scraped success
#   counters must match what k6 sent.
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -eq 2 ] || dc_fail "usage: $0 <shiftserve binary> <model repository>"
dc_require_tools
BIN=$1 REPO=$2
PROM_CFG="$DC_ROOT/deploy/prometheus/prometheus.yml"
RULES_DIR="$DC_ROOT/deploy/prometheus/rules"

dc_log "promtool check config $PROM_CFG"
promtool check config "$PROM_CFG" 2>&1 | sed "s/^/  /"
[ "${PIPESTATUS[0]}" -eq 0 ] || dc_fail "promtool check config failed"
dc_log "promtool check rules $RULES_DIR/*.yml"
promtool check rules "$RULES_DIR"/*.yml 2>&1 | sed "s/^/  /"
[ "${PIPESTATUS[0]}" -eq 0 ] || dc_fail "promtool check rules failed"
dc_log "promtool test rules deploy/prometheus/tests/*.yml (alert and recording rule unit tests)"
for t in "$DC_ROOT"/deploy/prometheus/tests/*.yml; do
  promtool test rules "$t" 2>&1 | sed "s/^/  /"
  [ "${PIPESTATUS[0]}" -eq 0 ] || dc_fail "promtool test rules $t failed"
done

dc_start_server "$BIN" "$REPO"
SPEC=$(dc_models_spec) || dc_fail "could not derive the model list from $SERVER_URL/v1/models"
MODELS_LIST=$(tr ',' '\n' <<<"$SPEC" | cut -d= -f1 | paste -sd, -)

# Lint a scrape with promtool.
curl -fsS -m 5 "$SERVER_URL/metrics" >"$DC_WORK/scrape.txt"
set +e
promtool check metrics <"$DC_WORK/scrape.txt" >"$DC_WORK/lint.txt" 2>&1
lint_rc=$?
set -e
dc_log "promtool check metrics: exit $lint_rc, $(wc -l <"$DC_WORK/scrape.txt") lines scraped"
case $lint_rc in
  0) ;;
  3) # lint findings (not parse errors): tolerated only for the Triton-compatible names
     if grep -v -E '^nv_inference_[a-z_]+ ' "$DC_WORK/lint.txt" | grep -q .; then
       cat "$DC_WORK/lint.txt" >&2
       dc_fail "promtool check metrics found problems outside the Triton-compatible names"
     fi
     echo "  lint notes only on Triton-compatible names (kept for Triton dashboards):"
     sed 's/^/    /' "$DC_WORK/lint.txt" ;;
  *) cat "$DC_WORK/lint.txt" >&2; dc_fail "promtool could not parse the /metrics scrape" ;;
esac

dc_start_prometheus

# Load (bounded: k6 stops after DURATION + graceful stop; `timeout` caps it anyway). The latency
# thresholds are k6.sh's business; here the load only has to be answered.
DC_K6_ARGS=--no-thresholds dc_run_k6 "$SPEC" "${DC_DURATION:-20s}" "${DC_RATE:-5}" "$DC_WORK/summary.json" >"$DC_WORK/k6.txt" 2>&1 ||
  { cat "$DC_WORK/k6.txt" >&2; dc_fail "k6 failed during the Prometheus check"; }
sed 's/^/  /' "$DC_WORK/k6.txt"

# Query until every model has a p95 (at most 40 s: a few scrape + rule intervals).
"$DC_PY" - "$PROM" "$MODELS_LIST" "$DC_WORK/summary.json" <<'PY'
import json, math, sys, time, urllib.parse, urllib.request

prom, models, summary = sys.argv[1], sys.argv[2].split(","), sys.argv[3]

def query(expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    if doc.get("status") != "success":
        sys.exit(f"query failed: {expr}: {doc}")
    return doc["data"]["result"]

def by_model(expr):
    out = {}
    for s in query(expr):
        v = float(s["value"][1])
        out[s["metric"].get("model", "")] = v
    return out

P95 = ('histogram_quantile(0.95, sum by (model, le) '
       '(rate(shiftserve_request_duration_seconds_bucket[1m])))')
REC = "model:shiftserve_request_duration_seconds:p95_1m"
SUCC = 'sum by (model) (shiftserve_requests_total{outcome="success"})'
k6 = json.load(open(summary))["metrics"]
scen = {m: "".join(c if c.isalnum() or c == "_" else "_" for c in m) for m in models}
sent = {m: k6[f"http_req_duration{{scenario:{scen[m]}}}"]["values"]["count"] for m in models}
# Poll (at most 40 s: a few scrape and rule intervals) until the last scrape has every request.
deadline = time.time() + 40
while True:
    up = query('up{job="shiftserve"}')
    p95, rec, succ = by_model(P95), by_model(REC), by_model(SUCC)
    ok = (up and float(up[0]["value"][1]) == 1
          and all(m in p95 and math.isfinite(p95[m]) for m in models)
          and all(m in rec and math.isfinite(rec[m]) for m in models)
          and all(succ.get(m, 0) >= sent[m] for m in models))
    if ok or time.time() > deadline:
        break
    time.sleep(2)

if not up or float(up[0]["value"][1]) != 1:
    sys.exit(f'up{{job="shiftserve"}} is not 1: {up}')
print(f"  PromQL: {P95}")
for m in models:
    v = p95.get(m)
    if v is None or not math.isfinite(v) or v <= 0:
        sys.exit(f"no finite per-model p95 for {m}: {p95}")
    r = rec.get(m)
    if r is None or not math.isfinite(r):
        sys.exit(f"recording rule {REC} has no finite value for {m}: {rec}")
    client = k6[f"http_req_duration{{scenario:{scen[m]}}}"]["values"]["p(95)"]
    print(f"  {m:<14} server p95 {v * 1000:8.2f} ms (rule {r * 1000:8.2f} ms)   k6 client p95 {client:8.2f} ms")

# Counters: the scraped success count equals what k6 got answered (k6's own threshold allows
# under 1% failures, so at least 99% of what it sent, never more than it sent).
for m in models:
    got = succ.get(m, 0)
    if got > sent[m] or got < 0.99 * sent[m]:
        sys.exit(f"{m}: Prometheus saw {got:.0f} successful requests, k6 sent {sent[m]}")
    print(f'  {m:<14} shiftserve_requests_total{{outcome="success"}} = {got:.0f} (k6 sent {sent[m]})')

with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=5) as r:
    groups = json.load(r)["data"]["groups"]
rules = [rule for g in groups for rule in g["rules"]]
bad = [(rule["name"], rule.get("lastError")) for rule in rules if rule.get("health") != "ok"]
if not rules:
    sys.exit("Prometheus loaded no rules from deploy/prometheus/rules")
if bad:
    sys.exit(f"rules failing to evaluate: {bad}")
print(f"  {len(rules)} recording/alerting rules loaded, all evaluating (health ok)")
PY
dc_log "PASS: promtool config/rules/metrics checks; real Prometheus scraped shiftserve and answered the per-model p95"
