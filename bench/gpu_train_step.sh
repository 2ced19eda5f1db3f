#!/usr/bin/env bash
# The device run of docs/performance.md: SoCo-R50-FPN training steps on one GPU (synthetic views, batch 64):
# AMP with FLOPs / MFU, AMP + channels-last, fp32, AMP + torch.compile of the backbones. One JSON line per
# variant goes to ${OUT:-.}/train_step_gpu.jsonl. Expects Detectron2 and fvcore importable (PYTHONPATH).
set -u
OUT=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
run() {  # seconds, then bench/train_step.py arguments
    local limit=$1
    shift
    timeout "$limit" python3 bench/train_step.py --config-file configs/soco_r50_fpn.yaml --device cuda --synthetic \
        --batch 64 --iters 8 --warmup 3 --json "$OUT/train_step_gpu.jsonl" "$@" 2>&1 | grep -v Warning | tail -3
}
run 60 --amp --flops
run 45 --amp --channels-last
run 45
run 45 --amp --batch 32
run 90 --amp --compile
