#!/usr/bin/env bash
# The GPU version of the study (docs/results.md, "GPU run"): one seed, longer pretraining and fine-tuning than
# the CPU study, every arm in its own process at once on one GPU (R18 at 64-256 px leaves a GPU mostly idle, so
# the arms overlap). A stage still running after LIMIT seconds is stopped; what finished is summarized.
#
#   STUDY=/tmp/study_gpu OUT=results bash tools/run_study_gpu.sh [LIMIT seconds, default 280]
#
# Expects Detectron2 importable. Without selective search installed, put the CPU study's proposals at
# $STUDY/data/proposals.pkl first: the scenes are regenerated bit for bit from their seeds.
set -u
STUDY=${STUDY:-/tmp/study_gpu}
OUT=${OUT:-$STUDY}
LIMIT=${1:-280}
ARGS=(--output "$STUDY" --device "${DEVICE:-cuda}" --workers 3 --seeds 0
      --pretrain-iters "${PRETRAIN_ITERS:-1500}" --finetune-iters "${FINETUNE_ITERS:-1000}")
ARMS=(random_init byol_whole_image soco moco_scene moco_obj_obj_dilate)
mkdir -p "$STUDY" "$OUT"
python3 tools/run_study.py "${ARGS[@]}" --prepare-only || exit 1
for arm in "${ARMS[@]}"; do
    timeout "$LIMIT" python3 tools/run_study.py "${ARGS[@]}" --arms "$arm" > "$STUDY/$arm.out" 2>&1 &
done
wait
python3 tools/run_study.py --output "$STUDY" --summarize-only
for arm in "${ARMS[@]}"; do tail -3 "$STUDY/$arm.out"; done
cp "$STUDY"/summary.json "$STUDY"/results_table.md "$STUDY"/*.png "$OUT"/ 2>/dev/null
# per-arm results, metrics and logs in one archive (the device returns at most 8 files)
(cd "$STUDY" && tar czf "$OUT/study_gpu_runs.tgz" --exclude='*.pth' --exclude='*.pkl' --exclude='data' \
    --exclude='inference' .)
