#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded default, the simulated ZTF survey:
#   simulate -> train (experiments/configs/demo.py) -> evaluate -> export -> score the packets.
# Usage: bash experiments/demo.sh [OUT_DIR]   (default demo_out). Runs from the repo root with .venv installed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_out}
BIN=${BIN:-.venv/bin}
NUM_SOURCES=${DEMO_NUM_SOURCES:-400}
SEED=${DEMO_SEED:-2}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - t0 ))s] $*"; }

step "1/5 simulate a ZTF survey: $NUM_SOURCES sources, seed $SEED -> $OUT/sim"
"$BIN/btsbot-simulate" --num_sources="$NUM_SOURCES" --seed="$SEED" --out="$OUT/sim"

step "2/5 train experiments/configs/demo.py on $OUT/sim -> $OUT/train"
"$BIN/btsbot-train" --config=experiments/configs/demo.py --config.data_dir="$OUT/sim" --workdir="$OUT/train"

step "3/5 evaluate the best checkpoint on the test split -> $OUT/report"
"$BIN/btsbot-evaluate" --checkpoint="$OUT/train" --data="$OUT/sim" --split=test --out="$OUT/report" --noprogress

step "4/5 export the best checkpoint (StableHLO, ONNX, SavedModel) -> $OUT/export"
"$BIN/btsbot-export" --checkpoint="$OUT/train" --format=all --out="$OUT/export" --overwrite

step "5/5 score the simulated avro packets with the exported ONNX model -> $OUT/scores.csv"
"$BIN/btsbot-score" --checkpoint="$OUT/export/onnx" --input="$OUT/sim/alerts" \
  --output="$OUT/scores.csv" --rejected="$OUT/rejected.csv" --noprogress

echo
echo "=== demo finished in $(( $(date +%s) - t0 ))s. Outputs:"
echo "  simulated survey (avro packets + training-set files): $OUT/sim"
echo "  training workdir (metrics.csv, TensorBoard, best/):   $OUT/train"
echo "  evaluation report (report.json, sources.csv, PNGs):    $OUT/report"
echo "  exported models (stablehlo/, onnx/, savedmodel/):      $OUT/export"
echo "  packet scores / rejected alerts:                      $OUT/scores.csv, $OUT/rejected.csv"
"$BIN/python" - "$OUT/report/report.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
al = r.get("alert_level", r.get("alert", {}))
print("  test split: " + ", ".join(f"{k}={al[k]:.4f}" for k in ("roc_auc", "accuracy", "balanced_accuracy") if k in al))
PY
