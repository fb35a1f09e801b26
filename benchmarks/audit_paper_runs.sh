#!/usr/bin/env bash
# Train a paper config in mode `none` (universal features) and in its own mode
# (MetaMorphosis), then audit both with the full attack budget. The two runs
# and then the two audits go side by side (they share one GPU well).
#
#   bash benchmarks/audit_paper_runs.sh CONFIG NAME DATA_ROOT [DEVICE]
#   e.g. bash benchmarks/audit_paper_runs.sh configs/celeba_smile_gender.yaml \
#            celeba_smile_gender ../shared/data/celeba cuda
#
# Writes runs/NAME_none and runs/NAME_both, each with audit/report.{md,json,html}.
set -euo pipefail
config=$1
name=$2
data_root=$3
device=${4:-auto}
runs=${RUNS:-runs}
mm() { python3 -m metamorphosis "$@"; }
mkdir -p "$runs"

mm train "$config" --out "$runs/${name}_none" --data-root "$data_root" --quiet \
    --set privacy.mode=none --set train.device="$device" >"$runs/${name}_none.train.log" 2>&1 &
mm train "$config" --out "$runs/${name}_both" --data-root "$data_root" --quiet \
    --set train.device="$device" >"$runs/${name}_both.train.log" 2>&1 &
wait -n && wait -n

for mode in none both; do
    mm audit "$runs/${name}_${mode}" --data-root "$data_root" --device "$device" --quiet \
        >"$runs/${name}_${mode}.audit.log" 2>&1 &
done
wait -n && wait -n
for mode in none both; do
    echo "== ${name}_${mode}"
    cat "$runs/${name}_${mode}.audit.log"
done
