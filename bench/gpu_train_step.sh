#!/usr/bin/env bash
# The device run of docs/performance.md, one script: the ceiling (a plain torchvision ResNet-50 supervised step,
# AMP, channels-last, batch 256, 224 px) and SoCo-R50-FPN training steps on the same GPU (synthetic views), at
# batch 64 and at the paper's 128 per GPU, per-view and per-size view calls, with FLOPs, the phase split and peak
# memory; then AMP + torch.compile of the backbones (its compile time reported). One JSON line per run goes to
# ${OUT:-.}/train_step_gpu.jsonl, and the last lines print SoCo's achieved FLOP/s as a ratio of the ceiling's
# (target: >= 0.8). Expects Detectron2 and fvcore importable (PYTHONPATH). Checked on a CPU by
# tests/test_performance_flops.py (DEVICE=cpu with tiny sizes).
set -u
OUT=${OUT:-.}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
SOCO_ARGS=${SOCO_ARGS:-}        # appended to every SoCo run: options, then KEY VALUE overrides (the CPU check shrinks views)
CEILING_ARGS=${CEILING_ARGS:---batch 256}
BATCHES=${BATCHES:-64 128}
JSONL="$OUT/train_step_gpu.jsonl"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
    AMP="--amp --channels-last"
else
    AMP=""
fi
soco() {  # seconds, then bench/train_step.py arguments
    local limit=$1
    shift
    timeout "$limit" "$PYTHON" bench/train_step.py --config-file configs/soco_r50_fpn.yaml --device "$DEVICE" \
        --synthetic --iters 8 --warmup 3 --json "$JSONL" "$@" $SOCO_ARGS 2>&1 | grep -v Warning | tail -2
}
timeout 120 "$PYTHON" bench/resnet50_ceiling.py --device "$DEVICE" $AMP $CEILING_ARGS --json "$JSONL" 2>&1 | tail -2
for batch in $BATCHES; do
    for batching in per_view per_size; do
        soco 120 $AMP --flops --batch "$batch" --view-batching "$batching"
    done
done
if [ "$DEVICE" = cuda ]; then
    soco 150 $AMP --batch 64 --view-batching per_size --compile
fi
"$PYTHON" - "$JSONL" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ceiling = [r for r in rows if r.get("bench") == "resnet50_ceiling"][-1]
print(f"ceiling: ResNet-50 {ceiling['images_per_s']} images/s, {ceiling['achieved_tflops']} TFLOP/s")
for r in rows:
    if "achieved_tflops" in r and r.get("bench") != "resnet50_ceiling":
        ratio = r["achieved_tflops"] / ceiling["achieved_tflops"]
        print(f"SoCo batch {r['batch']} {r['view_batching']}: {r['images_per_s']} images/s, {r['achieved_tflops']} "
              f"TFLOP/s = {ratio:.2f} of the ceiling (target 0.8); data share {r['data_share']}, peak GPU "
              f"{r.get('peak_gpu_mb', '-')} MB")
PY
