#!/usr/bin/env python
"""`make demo`: the objpretrain chain end to end on a CPU in about 10 minutes, ending on a working detector.

Stages, each one of the project's own commands (written at the top of its log, so it can be rerun):

1. data: the study's procedural scenes (objpretrain/data/datasets/scenes.py: 1024 unlabelled scenes for
   pretraining, labelled ones for fine-tuning, 128 held out) and selective-search proposals for the unlabelled ones
   (``tools/run_study.py --prepare-only``);
2. SoCo pretraining of an R18-FPN (configs/learning/soco_r18_fpn.yaml, 200 iterations at batch 32) with the health
   monitors and view retrieval on the held-out scenes;
3. conversion to a Detectron2 checkpoint (tools/convert_ckpt.py, the transfer docs/results.md found best);
4. Faster R-CNN R18-FPN fine-tuning on 8 labelled scenes and COCO evaluation on the held-out ones, from the SoCo
   weights (configs/transfer/faster_rcnn_r18_fpn_scenes_n8.yaml: the study's recipe on 8 scenes, 400 iterations);
5. the same fine-tuning from random init, beside it.

It ends with both detectors' box AP / AP50 and the pretraining's health (embedding spread, loss beside its collapse
value, backbone movement, view retrieval against the initial weights). One line per stage on the terminal; the full
output of every stage goes to its log under ``--output``.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from study.pipeline import last_metric  # tools/study, beside this script

from objpretrain.engine.health import format_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The SoCo transfer of the demo: the one the study found best (docs/results.md, "Detection transfer").
TRANSFER = ("--to", "d2-fpn", "--drop", "fpn,box_head")
# Labelled scenes of the demo's fine-tunings: the data step makes that subset, and its config has the schedule
# (400 iterations; the study itself fine-tunes on 2 and 4 scenes for 800, docs/results.md).
LABELLED_SCENES = 8
FINETUNE_CONFIG = f"configs/transfer/faster_rcnn_r18_fpn_scenes_n{LABELLED_SCENES}.yaml"


def run(step, title, cmd, log):
    """Runs ``cmd`` from the checkout with its output in ``log``; prints one line; exits with the log's tail on
    failure."""
    print(f"[{step}] {title} ...", end=" ", flush=True)
    start = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n\n")
        f.flush()
        returncode = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        with open(log) as f:
            tail = f.read()[-2500:]
        print(f"failed (exit {returncode}); log: {log}")
        sys.exit(f"{tail}\ndemo stage '{title}' failed; full log: {log}")
    print(f"{time.time() - start:.0f} s; log: {log}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("--pretrain-iters", type=int, default=200)
    parser.add_argument("--finetune-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="overrides of both fine-tunings (e.g. SOLVER.MAX_ITER 20 for a quick check)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    py = sys.executable
    start = time.time()
    data = os.path.join(out, "data")

    run("1/5", "data: scenes and their proposals",
        [py, "tools/run_study.py", "--output", out, "--prepare-only", "--transfer-scenes", LABELLED_SCENES],
        os.path.join(out, "data.log"))
    registrations = [
        "--register-coco", f"study_train_n{LABELLED_SCENES}:{data}/train/annotations_n{LABELLED_SCENES}.json:"
        f"{data}/train/images",
        "--register-coco", f"study_val:{data}/val/annotations.json:{data}/val/images"]

    pretrain_dir = os.path.join(out, "pretrain")
    run("2/5", f"SoCo pretraining, {args.pretrain_iters} iterations",
        [py, "tools/pretrain_net.py", "--config-file", "configs/learning/soco_r18_fpn.yaml",
         "DATASETS.IMAGE_FOLDER_REGISTER", f"('demo_scenes:{data}/pretrain/images',)",
         "DATASETS.COCO_JSON_REGISTER", f"('study_val:{data}/val/annotations.json:{data}/val/images',)",
         "DATASETS.TRAIN", "('demo_scenes',)", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{data}/proposals.pkl',)",
         "SOLVER.MAX_ITER", args.pretrain_iters, "SOLVER.CHECKPOINT_PERIOD", 100000,
         "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET", "study_val", "SEED", args.seed, "OUTPUT_DIR", pretrain_dir],
        os.path.join(out, "pretrain.log"))

    converted = os.path.join(out, "soco_r18_fpn.pkl")
    run("3/5", "conversion to a Detectron2 checkpoint",
        [py, "tools/convert_ckpt.py", os.path.join(pretrain_dir, "model_final.pth"), converted, *TRANSFER],
        os.path.join(out, "convert.log"))

    detectors = {}
    for step, (name, weights) in (("4/5", ("SoCo", converted)), ("5/5", ("random init", ""))):
        finetune_dir = os.path.join(out, "finetune_" + ("soco" if weights else "random_init"))
        run(step, f"Faster R-CNN fine-tuning on {LABELLED_SCENES} labelled scenes from {name}",
            [py, "tools/train_net.py", "--config-file", FINETUNE_CONFIG, *registrations, "MODEL.WEIGHTS", weights,
             "SEED", args.seed, "OUTPUT_DIR", finetune_dir, *args.finetune_opts],
            os.path.join(out, os.path.basename(finetune_dir) + ".log"))
        metrics = os.path.join(finetune_dir, "metrics.json")
        detectors[name] = (last_metric(metrics, "bbox/AP"), last_metric(metrics, "bbox/AP50"))

    print(f"\nobjpretrain demo finished in {(time.time() - start) / 60:.1f} min; outputs under {out}")
    with open(os.path.join(pretrain_dir, "health_summary.json")) as f:
        print("pretraining health: " + format_summary(json.load(f)))
    for name, (ap, ap50) in detectors.items():
        print(f"detector fine-tuned from {name:11s} on {LABELLED_SCENES} labelled scenes: box AP {ap:.1f}, "
              f"AP50 {ap50:.1f} (128 held-out scenes)")


if __name__ == "__main__":
    main()
