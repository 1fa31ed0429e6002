#!/usr/bin/env bash
# Check 6: the commands the deployment files give the server really start it, the way the image
# would: the Dockerfile's ENTRYPOINT + CMD and ENV, the compose service's command and environment,
# and the Kubernetes container's args and env, each run as the image's non-root uid (10001, via
# setpriv) against a read-only copy of the repository. Only the listen address (-> 127.0.0.1),
# port (-> a free one) and repository path are rewritten. Each must become ready, answer the
# probes the file declares (Docker HEALTHCHECK command, compose healthcheck, k8s liveness/readiness
# paths), and on SIGTERM exit 0 within its drain timeout.
#   scripts/deploy-checks/entrypoints.sh <shiftserve binary> <model repository>
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -eq 2 ] || dc_fail "usage: $0 <shiftserve binary> <model repository>"
dc_require_tools
BIN=$(realpath "$1") SRC_REPO=$(realpath "$2")
command -v setpriv >/dev/null || dc_fail "setpriv (util-linux) is needed"

# A world-readable, root-owned copy: uid 10001 can read it and write nothing.
chmod 755 "$DC_WORK"
install -m 0755 "$BIN" "$DC_WORK/shiftserve"
cp -r "$SRC_REPO" "$DC_WORK/models"
chmod -R a+rX,go-w "$DC_WORK/models"

# Extract (name, argv, env, probes) from the three files.
"$DC_PY" - "$DC_ROOT" >"$DC_WORK/cases.json" <<'PY'
import json, re, sys, yaml
root = sys.argv[1]
cases = []

# Dockerfile: last ENTRYPOINT / CMD (exec form), ENV, USER, HEALTHCHECK of the final stage
text = open(f"{root}/deploy/Dockerfile").read().replace("\\\n", " ")
final = text.split("\nFROM ")[-1]
def instr(name):
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", final, re.M)]
entry = json.loads(instr("ENTRYPOINT")[-1])
cmd = json.loads(instr("CMD")[-1])
env = {}
for e in instr("ENV"):
    for k, v in re.findall(r"(\w+)=(\S+)", e):
        env[k] = v
user = instr("USER")[-1].split(":")
hc = instr("HEALTHCHECK")[-1]
hc_cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
cases.append({"name": "Dockerfile ENTRYPOINT+CMD", "argv": entry[1:] + cmd, "env": env,
              "uid": int(user[0]), "gid": int(user[1] if len(user) > 1 else user[0]),
              "probe_cmds": [hc_cmd], "probe_paths": []})

# compose: the shiftserve service's command, environment, healthcheck
comp = yaml.safe_load(open(f"{root}/deploy/docker-compose.yml"))["services"]["shiftserve"]
cenv = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in (comp.get("environment") or {}).items()}
test = comp["healthcheck"]["test"]
cases.append({"name": "docker-compose.yml shiftserve.command", "argv": comp["command"], "env": cenv,
              "uid": int(user[0]), "gid": int(user[1] if len(user) > 1 else user[0]),
              "probe_cmds": [test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]], "probe_paths": []})

# Kubernetes: the container's args/env, the pod's runAsUser, the probes' paths
dep = yaml.safe_load(open(f"{root}/deploy/k8s/deployment.yaml"))
pod = dep["spec"]["template"]["spec"]
(c,) = pod["containers"]
kenv = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
paths = [c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe") if p in c]
sc = pod.get("securityContext", {})
cases.append({"name": "k8s deployment args", "argv": c["args"], "env": kenv,
              "uid": sc.get("runAsUser", 0), "gid": sc.get("runAsGroup", 0),
              "probe_cmds": [], "probe_paths": paths})
json.dump(cases, sys.stdout)
PY

N=$("$DC_PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$DC_WORK/cases.json")
for i in $(seq 0 $((N - 1))); do
  PORT=$(dc_free_port)
  # name, then NUL-separated argv / env / probes, rewritten for this machine
  "$DC_PY" - "$DC_WORK/cases.json" "$i" "$PORT" "$DC_WORK/models" "$DC_WORK/case" <<'PY'
import json, sys
cases, i, port, repo, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
c = json.load(open(cases))[i]
argv = list(c["argv"])
def setopt(flag, value, required=True):
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    elif required:
        sys.exit(f"{c['name']}: no {flag} in {argv}")
setopt("--http-address", "127.0.0.1")
setopt("--http-port", port)
setopt("--grpc-port", "0", required=False)  # a free port: never contend for 8001 on this machine
setopt("--model-repository", repo)
exit_timeout = int(argv[argv.index("--exit-timeout-secs") + 1]) if "--exit-timeout-secs" in argv else 30
probes = [[a.replace(":8080", f":{port}") for a in p] for p in c["probe_cmds"]]
open(out + ".name", "w").write(c["name"])
open(out + ".argv", "w").write("\0".join(argv) + "\0")
open(out + ".env", "w").write("\0".join(f"{k}={v}" for k, v in c["env"].items()) + ("\0" if c["env"] else ""))
open(out + ".ids", "w").write(f"{c['uid']} {c['gid']} {exit_timeout}\n")
open(out + ".probecmds", "w").write("".join("\x01".join(p) + "\n" for p in probes))
open(out + ".paths", "w").write("".join(p + "\n" for p in c["probe_paths"]))
PY
  NAME=$(cat "$DC_WORK/case.name")
  mapfile -d '' ARGV <"$DC_WORK/case.argv"
  mapfile -d '' ENVV <"$DC_WORK/case.env"
  read -r UID_ GID_ EXIT_TIMEOUT <"$DC_WORK/case.ids"
  [ "$UID_" -ne 0 ] || dc_fail "$NAME: runs as root"
  dc_log "$NAME as uid $UID_: shiftserve ${ARGV[*]}"
  LOG="$DC_WORK/entry-$i.log"
  env -i PATH=/usr/bin:/bin HOME=/nonexistent "${ENVV[@]}" \
    setpriv --reuid "$UID_" --regid "$GID_" --clear-groups \
    "$DC_WORK/shiftserve" "${ARGV[@]}" >"$LOG" 2>&1 &
  PID=$!
  dc_track "$PID"
  if ! dc_wait_http "http://127.0.0.1:$PORT/v2/health/ready" "${SERVER_READY_TIMEOUT:-120}" 200 "$PID"; then
    sed 's/\x1b\[[0-9;]*m//g' "$LOG" | tail -n 15 >&2
    dc_fail "$NAME: not ready"
  fi
  echo "  ready on 127.0.0.1:$PORT (uid $(ps -o uid= -p "$PID" | tr -d ' '))"
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    IFS=$'\x01' read -r -a PROBE <<<"$line"
    "${PROBE[@]}" || dc_fail "$NAME: health probe failed: ${PROBE[*]}"
    echo "  probe ok: ${PROBE[*]}"
  done <"$DC_WORK/case.probecmds"
  while IFS= read -r path; do
    [ -n "$path" ] || continue
    code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$PORT$path")
    [ "$code" = 200 ] || dc_fail "$NAME: probe path $path answered $code"
    echo "  probe ok: GET $path -> 200"
  done <"$DC_WORK/case.paths"
  kill -TERM "$PID"
  t0=$SECONDS
  for _ in $(seq 1 $(( (EXIT_TIMEOUT + 5) * 10 ))); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$PID" 2>/dev/null; then dc_fail "$NAME: still running $((EXIT_TIMEOUT + 5)) s after SIGTERM"; fi
  set +e; wait "$PID"; rc=$?; set -e
  [ "$rc" -eq 0 ] || { sed 's/\x1b\[[0-9;]*m//g' "$LOG" | tail -n 10 >&2; dc_fail "$NAME: exit status $rc after SIGTERM"; }
  echo "  SIGTERM: exited 0 after $((SECONDS - t0)) s (drain timeout $EXIT_TIMEOUT s)"
done
dc_log "PASS: Dockerfile, compose and k8s commands start the server as non-root, probes answer, SIGTERM exits cleanly"
