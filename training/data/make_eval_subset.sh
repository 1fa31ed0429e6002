#!/bin/sh
# Data for the CI model-card check (models/tests/model_cards.rs), small and deterministic:
#   * installs the TTS engines / voices and dataset-fashion-mnist (install_tts.sh, needs root;
#     skip with SKIP_INSTALL=1),
#   * synthesises the held-out-voice intent subset (310 clips: one phrasing per intent and
#     held-out voice -- pico en-US/en-GB, RHVoice alan/bdl/clb/evgeniy-eng/lyubov/slt, festival
#     cmu_us_slt_arctic_hts, flite slt) into <repo>/data/eval/intents (git-ignored).
# FSDD is read from ../shared/data/fsdd by the test itself. About 20 s on 2 cores.
# Usage: training/data/make_eval_subset.sh [python]   (default: python3; it needs numpy)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${1:-}
[ -n "$PY" ] || PY=python3
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    sh "$HERE/install_tts.sh"
fi
# numpy is the only Python dependency of the generator
"$PY" -c "import numpy" 2>/dev/null || { echo "make_eval_subset.sh: $PY needs numpy" >&2; exit 1; }
rm -rf "$REPO/data/eval/intents"
nice -n 10 "$PY" "$HERE/make_intents.py" --eval-subset --out "$REPO/data/eval/intents"
n=$(ls "$REPO/data/eval/intents"/*.wav | wc -l)
[ "$n" -eq 310 ] || { echo "make_eval_subset.sh: expected 310 clips, got $n" >&2; exit 1; }
echo "eval subset ready: $REPO/data/eval/intents ($n clips)"
