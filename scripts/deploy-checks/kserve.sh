#!/usr/bin/env bash
# Check 4c: the KServe manifests in deploy/kserve.
#  1. Every object validated against KServe's own CRD schemas (kserve-crds/, extracted from the
#     KServe repository: origin and licence in kserve-crds/README.md) with python-jsonschema (in the
#     tools venv as a dependency of kubernetes-validate), in
#     strict mode (unknown fields, duplicate list-map keys and bad quantities are errors), after a
#     self-test that broken variants are rejected; then cross-checks against the runtime, the
#     Kubernetes Deployment and the Dockerfile (kserve_validate.py).
#  2. Every flag of the runtime's args is one `shiftserve serve --help` lists.
#  3. For each InferenceService, the container the KServe controller would build (runtime args +
#     the predictor's args, env merged by name) is started as the runtime's non-root uid against a
#     read-only copy of the repository, with only the listen address, the ports and the
#     repository path (the image's bundled one, or /mnt/models where the storage initializer puts
#     storageUri) rewritten; it must become ready, answer its probe paths and a prediction per
#     model, serve the Open Inference Protocol on the gRPC port where the runtime declares one
#     (tritonclient.grpc: readiness and metadata of every model), and exit 0 on SIGTERM within
#     --exit-timeout-secs.
#   scripts/deploy-checks/kserve.sh <shiftserve binary> <model repository>
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ $# -eq 2 ] || dc_fail "usage: $0 <shiftserve binary> <model repository>"
dc_require_tools
BIN=$(realpath "$1") SRC_REPO=$(realpath "$2")
command -v setpriv >/dev/null || dc_fail "setpriv (util-linux) is needed"

dc_log "schemas: KServe CRDs (scripts/deploy-checks/kserve-crds), strict"
"$DC_PY" "$DC_DIR/kserve_validate.py" "$DC_ROOT/deploy/kserve" "$DC_DIR/kserve-crds" \
  --emit-cases "$DC_WORK/cases.json" || dc_fail "deploy/kserve does not validate"

HELP=$("$BIN" serve --help)
mapfile -t FLAGS < <("$DC_PY" -c '
import json, sys
for c in json.load(open(sys.argv[1])):
    for a in c["argv"]:
        if a.startswith("--"):
            print(a.split("=", 1)[0])' "$DC_WORK/cases.json" | sort -u)
GRPC=0 KNOWN=()
for f in "${FLAGS[@]}"; do
  grep -q -- "$f\b" <<<"$HELP" ||
    dc_fail "the runtime passes $f, which \`shiftserve serve --help\` does not list"
  KNOWN+=("$f")
  [ "$f" != --grpc-port ] || GRPC=1
done
echo "  runtime flags listed by shiftserve serve --help: ${KNOWN[*]}"

chmod 755 "$DC_WORK"
install -m 0755 "$BIN" "$DC_WORK/shiftserve"
cp -r "$SRC_REPO" "$DC_WORK/models"
chmod -R a+rX,go-w "$DC_WORK/models"
MODELS=$(find "$DC_WORK/models" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)

N=$("$DC_PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$DC_WORK/cases.json")
for i in $(seq 0 $((N - 1))); do
  PORT=$(dc_free_port) GPORT=$(dc_free_port)
  "$DC_PY" - "$DC_WORK/cases.json" "$i" "$PORT" "$GPORT" "$GRPC" "$DC_WORK/models" "$DC_WORK/case" <<'PY'
import json, sys
cases, i, port, gport, grpc, repo, out = sys.argv[1:]
c = json.load(open(cases))[int(i)]
argv = list(c["argv"])
def setopt(flag, value):
    if flag not in argv:
        if value is None:  # not passed, and not wanted (a REST-only runtime)
            return
        sys.exit(f"{c['name']}: no {flag} in {argv}")
    j = argv.index(flag)
    if value is None:
        del argv[j:j + 2]
    else:
        argv[j + 1] = value
setopt("--http-address", "127.0.0.1")
setopt("--http-port", port)
setopt("--grpc-port", gport if grpc == "1" else None)
env = dict(c["env"], SHIFTSERVE_MODEL_REPOSITORY=repo)
open(out + ".name", "w").write(c["name"])
open(out + ".argv", "w").write("\0".join(argv) + "\0")
open(out + ".env", "w").write("\0".join(f"{k}={v}" for k, v in env.items()) + "\0")
open(out + ".ids", "w").write(f"{c['uid']} {c['gid']} {c['exit_timeout']}\n")
open(out + ".paths", "w").write("".join(p + "\n" for p in c["probe_paths"]))
print(f"  {c['name']}: repository {c['repository']} -> {repo}")
PY
  NAME=$(cat "$DC_WORK/case.name")
  mapfile -d '' ARGV <"$DC_WORK/case.argv"
  mapfile -d '' ENVV <"$DC_WORK/case.env"
  read -r UID_ GID_ EXIT_TIMEOUT <"$DC_WORK/case.ids"
  [ "$UID_" -ne 0 ] || dc_fail "$NAME: runs as root"
  dc_log "$NAME as uid $UID_: shiftserve ${ARGV[*]}"
  LOG="$DC_WORK/kserve-$i.log"
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
  while IFS= read -r path; do
    code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$PORT$path")
    [ "$code" = 200 ] || dc_fail "$NAME: probe path $path answered $code"
  done < <(sort -u "$DC_WORK/case.paths")
  echo "  probe paths answer 200: $(sort -u "$DC_WORK/case.paths" | tr '\n' ' ')"
  # Every model of the repository is served, and answers through the Open Inference Protocol.
  SERVER_URL="http://127.0.0.1:$PORT"
  served=$(curl -fsS -m 5 "$SERVER_URL/v1/models" | "$DC_PY" -c 'import json,sys; print("\n".join(sorted(m["name"] for m in json.load(sys.stdin)["models"])))')
  [ "$served" = "$MODELS" ] || dc_fail "$NAME: serves [$(echo $served)], the repository has [$(echo $MODELS)]"
  dc_exercise "$(dc_models_spec)"
  if [ "$GRPC" = 1 ]; then
    # The declared gRPC port speaks the Open Inference Protocol: the real tritonclient.grpc asks
    # for server readiness and each model's readiness and metadata.
    "$DC_PY" - "127.0.0.1:$GPORT" $MODELS <<'PY' || dc_fail "$NAME: the gRPC port does not serve"
import sys
import tritonclient.grpc as g
url, models = sys.argv[1], sys.argv[2:]
c = g.InferenceServerClient(url=url)
assert c.is_server_live() and c.is_server_ready(), "gRPC: server not live/ready"
for m in models:
    assert c.is_model_ready(m), f"gRPC: {m} not ready"
    meta = c.get_model_metadata(m, as_json=True)
    assert meta["name"] == m and {i["name"] for i in meta["inputs"]} == {"input", "raw"}, meta
print(f"  gRPC on {url}: live, ready, {len(models)} models ready with metadata (tritonclient.grpc)")
PY
  fi
  kill -TERM "$PID"
  deadline=$((SECONDS + EXIT_TIMEOUT + 5))
  while kill -0 "$PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  kill -0 "$PID" 2>/dev/null && dc_fail "$NAME: still running $((EXIT_TIMEOUT + 5)) s after SIGTERM"
  rc=0
  wait "$PID" || rc=$?
  [ "$rc" -eq 0 ] || dc_fail "$NAME: exited $rc on SIGTERM"
  echo "  SIGTERM: exited 0"
done
dc_log "PASS: deploy/kserve schema-valid against KServe's CRDs (strict), consistent, and its containers serve"
