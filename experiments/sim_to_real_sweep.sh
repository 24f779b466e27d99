#!/usr/bin/env bash
# The sim-to-real figures of docs/sim_to_real.md for survey sizes x seeds: simulate -> train (demo config) ->
# experiments/sim_to_real.py (real packets vs v1.0.1, the 39 labelled alerts, both models on the simulated test split
# with 90% source-bootstrap intervals), then the markdown table of all runs.
# Usage: bash experiments/sim_to_real_sweep.sh OUT_DIR   (from the repo root with .venv installed; ~4 min per
# 400-source run and ~5 per 1,500-source run on 2 CPU cores). Environment: SIZES (default "400 1500"), SEEDS ("0 1 2 3
# 4"), CONFIG (experiments/configs/demo.py), SHARED (../shared, for the real packets), KEEP=1 keeps packets/triplets.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash experiments/sim_to_real_sweep.sh OUT_DIR}
BIN=${BIN:-.venv/bin}
SHARED=${SHARED:-${BTSBOT_SHARED:-../shared}}
CONFIG=${CONFIG:-experiments/configs/demo.py}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
for d in ztf_alerts ztf_alerts_fink btsbot_examples; do
  [ -d "$SHARED/data/$d" ] || { echo "missing $SHARED/data/$d (set SHARED=...): the real packets are needed" >&2; exit 2; }
done
for N in ${SIZES:-400 1500}; do for S in ${SEEDS:-0 1 2 3 4}; do
  W=$OUT/s${N}_seed${S}; rm -rf "$W"; mkdir -p "$W"
  t0=$(date +%s); "$BIN/btsbot-simulate" --num_sources="$N" --seed="$S" --out="$W/sim" > "$W/sim.log" 2>&1
  t1=$(date +%s); "$BIN/btsbot-train" --config="$CONFIG" --config.data_dir="$W/sim" --config.progress_bar=False \
    --workdir="$W/train" > "$W/train.log" 2>&1
  t2=$(date +%s); "$BIN/python" experiments/sim_to_real.py --checkpoint="$W/train" --reference=v1.0.1 \
    --packets="$SHARED/data/ztf_alerts,$SHARED/data/ztf_alerts_fink" --labelled="$SHARED/data/btsbot_examples" \
    --simulated="$W/sim" --trained="$CONFIG, btsbot-simulate --num_sources=$N --seed=$S" \
    --out="$W/sim_to_real.json" > "$W/s2r.log" 2>&1
  t3=$(date +%s)
  "$BIN/python" - "$W/sim_to_real.json" $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p))
d["timing_s"] = dict(zip(("simulate", "train", "sim_to_real"), map(int, sys.argv[2:5])))
json.dump(d, open(p, "w"), indent=2)
PY
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W/sim/alerts" "$W"/sim/*.npy  # keep the CSVs, summaries and alerts.parquet
  echo "$(date +%T) sources=$N seed=$S done"
done; done
"$BIN/python" experiments/sim_to_real.py --table="$OUT/s*_seed*/sim_to_real.json"
