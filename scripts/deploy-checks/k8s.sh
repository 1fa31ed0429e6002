#!/usr/bin/env bash
# Check 4b: every Kubernetes manifest in deploy/k8s validated against the Kubernetes OpenAPI
# schemas bundled in PyPI's kubernetes-validate (offline), in strict mode (unknown fields are
# errors), for the newest bundled release and an older one still common in clusters; then
# cross-references between the manifests (k8s_xref.py), and the generated per-model parts must
# match models/repository (sync_models.py --check).
#   scripts/deploy-checks/k8s.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
dc_require_tools
KV="$DEPLOY_TOOLS/bin/kubernetes-validate"
mapfile -t MANIFESTS < <(find "$DC_ROOT/deploy/k8s" -name '*.yaml' ! -name kustomization.yaml | sort)
[ ${#MANIFESTS[@]} -gt 0 ] || dc_fail "no manifests in deploy/k8s"
for ver in 1.37.0 1.30.0; do
  dc_log "kubernetes-validate --strict -k $ver (${#MANIFESTS[@]} files)"
  "$KV" --strict -k "$ver" "${MANIFESTS[@]}" 2>&1 | sed 's/^/  /'
  [ "${PIPESTATUS[0]}" -eq 0 ] || dc_fail "schema validation failed for Kubernetes $ver"
done
# The validator must really be strict: a misspelt field is rejected.
sed 's/^\(  revisionHistoryLimit\)/\1x/' "$DC_ROOT/deploy/k8s/deployment.yaml" >"$DC_WORK/bad.yaml"
if "$KV" --strict --quiet "$DC_WORK/bad.yaml" >/dev/null 2>&1; then
  dc_fail "kubernetes-validate accepted a misspelt field: not validating"
fi
echo "  self-test: a misspelt Deployment field is rejected"
dc_log "deploy/k8s/sync_models.py --check (ConfigMap, mounts and HPA follow models/repository)"
"$DC_PY" "$DC_ROOT/deploy/k8s/sync_models.py" --check || dc_fail "manifests out of date with models/repository"
# kustomization.yaml is not a Kubernetes object (no schema); it is checked by the cross-checks.
dc_log "cross-checks (k8s_xref.py)"
"$DC_PY" "$DC_DIR/k8s_xref.py" || dc_fail "manifests are inconsistent"
dc_log "PASS: Kubernetes manifests schema-valid (strict) and consistent"
