#!/usr/bin/env bash
# Builds a small model repository out of the test fixtures in models/tests/fixtures (for running
# the live checks before/without the bundled models):
#   scripts/deploy-checks/fixture-repo.sh <dir>      -> <dir>/tiny (image), <dir>/slu (spoken intent)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 <dir>" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FIX="$ROOT/models/tests/fixtures"
add() {  # name fixture
  [ -f "$FIX/$2" ] || { echo "missing fixture $FIX/$2" >&2; exit 1; }
  mkdir -p "$OUT/$1/1"
  cp "$FIX/$2" "$OUT/$1/1/model.safetensors"
  cat >"$OUT/$1/config.toml" <<TOML
description = "test fixture $2"
max_batch_size = 8
preferred_batch_sizes = [4, 8]
max_queue_delay_us = 2000
queue_capacity = 256
threads = 1
instances = 1
[warmup]
batch_sizes = [1, 8]
iterations = 1
TOML
}
OUT=$1
mkdir -p "$OUT"
add tiny tiny_w3.safetensors
add slu slu_w3.safetensors
echo "fixture repository in $OUT: $(ls "$OUT" | tr '\n' ' ')"
