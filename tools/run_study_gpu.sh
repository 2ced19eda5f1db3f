#!/usr/bin/env bash
# The GPU version of the study (docs/results.md, "GPU run"): the CPU learning regime at batch 256 (the learning
# configs scale their lr with the square root of the batch), the same health monitors, probes and detection transfer
# (configs/transfer/: Faster R-CNN R18-FPN on 2 and 4 labelled scenes, the study's transfer arms), sized for about 12 minutes
# of one H200 with 16 CPU cores. Every arm runs in its own process at once on the one GPU (R18 at 64-128 px leaves a
# GPU mostly idle, so the arms overlap); an arm still running after LIMIT seconds is stopped, and what finished is
# summarized. Seeds run one after another.
#
#   STUDY=/tmp/study_gpu OUT=results bash tools/run_study_gpu.sh [LIMIT seconds per seed, default 240]
#   DEVICE=cpu SMOKE=1 STUDY=/tmp/s bash tools/run_study_gpu.sh 300   # the CPU check of this script (tests)
#
# Expects Detectron2 importable. Environment: SEEDS (default "0 1 2"), ARMS (default all seven), BATCH (256),
# PRETRAIN_ITERS (300), DEVICE (cuda), WORKERS (2 per arm: 7 arms x 2 = 14 of the 16 cores).
set -u
STUDY=${STUDY:-/tmp/study_gpu}
OUT=${OUT:-$STUDY}
LIMIT=${1:-240}
SEEDS=${SEEDS:-0 1 2}
if [ "${SMOKE:-0}" = 1 ]; then
    SCALE=(--smoke)
    SEEDS=0
else
    SCALE=(--pretrain-iters "${PRETRAIN_ITERS:-300}" --pretrain-opts SOLVER.IMS_PER_BATCH "${BATCH:-256}")
fi
ARGS=(--output "$STUDY" --device "${DEVICE:-cuda}" --workers "${WORKERS:-2}" "${SCALE[@]}")
read -r -a ARMS <<< "${ARMS:-random_init supervised supervised_detector byol_whole_image soco moco_scene moco_obj_obj_dilate}"
PY=${PYTHON:-python3}
mkdir -p "$STUDY" "$OUT"
"$PY" tools/run_study.py "${ARGS[@]}" --prepare-only || exit 1
for seed in $SEEDS; do
    for arm in "${ARMS[@]}"; do
        timeout "$LIMIT" "$PY" tools/run_study.py "${ARGS[@]}" --seeds "$seed" --arms "$arm" \
            > "$STUDY/${arm}_seed$seed.out" 2>&1 &
    done
    wait
done
"$PY" tools/run_study.py --output "$STUDY" --summarize-only
for out in "$STUDY"/*.out; do echo "== $out"; tail -2 "$out"; done
cp "$STUDY"/summary.json "$STUDY"/results_table.md "$STUDY"/*.png "$OUT"/ 2>/dev/null
# per-arm results, metrics and logs in one archive (the device returns at most 8 files)
(cd "$STUDY" && tar czf "$OUT/study_gpu_runs.tgz" --exclude='*.pth' --exclude='*.pt' --exclude='*.pkl' \
    --exclude='data' --exclude='inference' .)
