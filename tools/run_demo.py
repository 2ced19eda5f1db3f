#!/usr/bin/env python
"""`make demo`: the whole objpretrain chain on the bundled demo data, on CPU, in minutes.

Stages: demo data -> selective-search proposals -> SoCo pretraining (R18-FPN, 64-px views, the CPU learning
regime of configs/learning/, with the health monitors and view retrieval on its 50 training images: the 7
held-out tree tiles are too few for it) -> conversion
to a Detectron2 checkpoint -> Faster R-CNN fine-tuning on the tree tiles -> COCO evaluation. Each stage is an
ordinary command a user could type; they are printed before they run. Outputs go under ``--output``. The demo
ends with the pretraining's health: final embedding spread, backbone movement, and view retrieval against the
initial weights (docs/pretraining.md, "Health monitors").
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from objpretrain.engine.health import format_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, log):
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            sys.stdout.write("    " + line)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"demo stage failed (exit {proc.returncode}); full log: {log}")
    print(f"    [{time.time() - start:.0f} s, log: {log}]", flush=True)


def metric_values(metrics_json, key):
    """Every logged value of ``key`` in a Detectron2 metrics.json (one JSON record per line)."""
    values = []
    if os.path.exists(metrics_json):
        with open(metrics_json) as f:
            for line in f:
                record = json.loads(line)
                if key in record:
                    values.append(record[key])
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("--pretrain-iters", type=int, default=200)
    parser.add_argument("--finetune-iters", type=int, default=400)
    args = parser.parse_args()
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    py = sys.executable
    start = time.time()
    outputs = {}

    run([py, "datasets/prepare_demo.py"], os.path.join(out, "prepare_demo.log"))
    outputs["demo data"] = os.path.join(REPO, "datasets", "demo")

    proposals = os.path.join(out, "proposals_demo_unlabeled.pkl")
    run([py, "tools/generate_proposals.py", "--images", "demo_unlabeled", "--output", proposals],
        os.path.join(out, "proposals.log"))
    outputs["proposals"] = proposals

    pretrain_dir = os.path.join(out, "pretrain")
    run([py, "tools/pretrain_net.py", "--config-file", "configs/learning/soco_r18_fpn.yaml",
         "DATASETS.PROPOSAL_FILES_TRAIN", f"('{proposals}',)", "SOLVER.MAX_ITER", str(args.pretrain_iters),
         "SOLVER.CHECKPOINT_PERIOD", "50", "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET", "demo_unlabeled",
         "OUTPUT_DIR", pretrain_dir], os.path.join(out, "pretrain.log"))
    outputs["pretraining checkpoint"] = os.path.join(pretrain_dir, "model_final.pth")
    outputs["pretraining metrics"] = os.path.join(pretrain_dir, "metrics.json")
    outputs["pretraining health"] = os.path.join(pretrain_dir, "health_summary.json")

    converted = os.path.join(out, "soco_r18_fpn_demo_d2.pkl")
    run([py, "tools/convert_ckpt.py", outputs["pretraining checkpoint"], converted, "--to", "d2-fpn"],
        os.path.join(out, "convert.log"))
    outputs["converted checkpoint"] = converted

    finetune_dir = os.path.join(out, "finetune")
    iters = args.finetune_iters
    # The lr drops at 2/3 and 8/9 of training, as in the paper protocol (SoCo §4.2), whatever the length.
    steps = f"({iters * 2 // 3}, {iters * 8 // 9})"
    run([py, "tools/train_net.py", "--config-file", "configs/demo/finetune_trees_r18_fpn.yaml",
         "MODEL.WEIGHTS", converted, "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps,
         "SOLVER.WARMUP_ITERS", str(min(50, iters // 3)), "SOLVER.CHECKPOINT_PERIOD", str(iters),
         "OUTPUT_DIR", finetune_dir],
        os.path.join(out, "finetune.log"))
    outputs["fine-tuned detector"] = os.path.join(finetune_dir, "model_final.pth")
    outputs["COCO evaluation"] = os.path.join(finetune_dir, "inference")

    print(f"\nobjpretrain demo finished in {time.time() - start:.0f} s. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:24s} {path}")
    losses = metric_values(outputs["pretraining metrics"], "total_loss")
    if losses:
        print(f"pretraining loss: {losses[0]:.3f} (first log) -> {losses[-1]:.3f} (last log)")
    if os.path.exists(outputs["pretraining health"]):
        with open(outputs["pretraining health"]) as f:
            print("pretraining health: " + format_summary(json.load(f)))
    ap = metric_values(os.path.join(finetune_dir, "metrics.json"), "bbox/AP")
    if ap:
        print(f"tree detection on demo_trees_val: COCO box AP {ap[-1]:.1f}")


if __name__ == "__main__":
    main()
