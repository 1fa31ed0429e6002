#!/usr/bin/env bash
# Check: the real tritonclient from PyPI (tritonclient[grpc,http]) against the real server, over
# HTTP and over gRPC, with the same checks and the same answers required of both protocols
# (tritonclient_check.py): health, metadata, readiness, API key, raw image/WAV as BYTES, FP32
# tensors, classification, refusals and their status codes, oversized messages, statistics,
# repository index, unload/load. The server runs in explicit mode with an API key. ~20 s.
#   scripts/deploy-checks/tritonclient.sh <shiftserve binary> <model repository>
set -euo pipefail
source "$(dirname "$0")/common.sh"
dc_require_tools
BIN=$1 REPO=$2
"$DC_PY" -c 'import tritonclient.grpc, tritonclient.http' ||
  dc_fail "tritonclient[grpc,http] is not installed: run scripts/deploy-checks/tools.sh"
KEY=tritonclient-check-key
dc_start_server "$BIN" "$REPO" --model-control-mode explicit --load-model '*' --api-key "$KEY"
[ -n "$SERVER_GRPC_PORT" ] || dc_fail "the server has no --grpc-port"
dc_log "tritonclient $("$DC_PY" -c 'import importlib.metadata as m; print(m.version("tritonclient"))'):" \
  "HTTP 127.0.0.1:$SERVER_PORT, gRPC 127.0.0.1:$SERVER_GRPC_PORT"
if ! timeout 300 "$DC_PY" "$DC_DIR/tritonclient_check.py" --http "127.0.0.1:$SERVER_PORT" \
  --grpc "127.0.0.1:$SERVER_GRPC_PORT" --key "$KEY" --fixtures "$DC_ROOT/loadtest/fixtures"; then
  dc_server_log_tail
  dc_fail "tritonclient checks failed"
fi
kill -0 "$SERVER_PID" 2>/dev/null || dc_fail "the server died during the checks"
dc_log "PASS: tritonclient.http and tritonclient.grpc pass the same checks with the same answers"
