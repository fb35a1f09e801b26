#!/usr/bin/env bash
# The demo run, audited with the ε and split sweeps (paper Fig. 7, Table 12).
#
#   bash benchmarks/demo_sweeps.sh [DEVICE] [RUN_DIR]     # DEVICE: cpu (default) or cuda
#
# `metamorphosis audit --sweep` trains the sweep points one after the other;
# this script trains them side by side first (same configs, same folders),
# so the audit finds them finished and only attacks them. The sweeps are of the
# paper's method: the demo as it ran before the recommended defence became its
# default (DP encoder + task privacy, mode `both`, 5 epochs).
set -euo pipefail
device=${1:-cpu}
run=${2:-runs/demo}
points=$run/audit/sweeps
paper=(--set defence.preset=null --set privacy.mode=both --set train.epochs=5)
mm() { python3 -m metamorphosis "$@"; }
train_point() {  # NAME, then --set overrides
    local name=$1
    shift
    mm train src/metamorphosis/demo.yaml --out "$points/$name" --quiet \
        --set train.device="$device" "${paper[@]}" "$@" >"$points/$name.log" 2>&1
}

mm demo --out "$run" --no-audit --quiet --set train.device="$device" "${paper[@]}"
mkdir -p "$points"
for eps in 0.5 1 2 4 8; do
    train_point "epsilon_$eps" --set privacy.target_epsilon="$eps" &
done
train_point epsilon_inf --set privacy.mode=task &
for split in 5 7 8; do
    train_point "split_$split" --set model.split_index="$split" &
done
for job in $(jobs -p); do wait "$job"; done
mm audit "$run" --sweep epsilon --sweep split --device "$device" --quiet
