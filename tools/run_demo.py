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
   weights and from random init (configs/transfer/faster_rcnn_r18_fpn_scenes_n8.yaml: the study's recipe on 8
   scenes, 400 iterations): the two side by side, the cores shared out as threads, as ``make study`` runs its stages
   (on 2 cores 1.3x the throughput of one two-threaded run after the other; docs/performance.md).

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

from study.pipeline import last_metric, thread_capped_env  # tools/study, beside this script

from objpretrain.engine.health import format_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The SoCo transfer of the demo: the one the study found best (docs/results.md, "Detection transfer").
TRANSFER = ("--to", "d2-fpn", "--drop", "fpn,box_head")
# Labelled scenes of the demo's fine-tunings: the data step makes that subset, and its config has the schedule
# (400 iterations; the study itself fine-tunes on 2 and 4 scenes for 800, docs/results.md).
LABELLED_SCENES = 8
FINETUNE_CONFIG = f"configs/transfer/faster_rcnn_r18_fpn_scenes_n{LABELLED_SCENES}.yaml"


def run(step, title, *stages):
    """Runs the ``stages`` ((command, log) pairs) from the checkout, each with its output in its log, side by side
    when there are several, the cores shared out as intra-op threads; prints one line; exits with a log's tail on
    failure."""
    print(f"[{step}] {title} ...", end=" ", flush=True)
    start = time.time()
    threads = max(1, (os.cpu_count() or 1) // len(stages)) if len(stages) > 1 else None
    env = thread_capped_env(threads)
    running = []
    for cmd, log in stages:
        with open(log, "w") as f:  # the command as it ran, thread cap included, so that it can be rerun
            f.write("$ " + (f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " if env else "")
                    + " ".join(shlex.quote(str(c)) for c in cmd) + "\n\n")
            f.flush()
            running.append((subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                             env=env), log))
    failed = [(returncode, log) for returncode, log in ((p.wait(), log) for p, log in running) if returncode != 0]
    logs = ", ".join(log for _, log in stages)
    if failed:
        returncode, log = failed[0]
        with open(log) as f:
            tail = f.read()[-2500:]
        print(f"failed (exit {returncode}); log: {log}")
        sys.exit(f"{tail}\ndemo stage '{title}' failed; full log: {log}")
    print(f"{time.time() - start:.0f} s; log{'s' if len(stages) > 1 else ''}: {logs}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("--pretrain-iters", type=int, default=200)
    parser.add_argument("--finetune-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="overrides of both fine-tunings (e.g. SOLVER.MAX_ITER 20 for a quick check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="the study's smoke-sized scenes (16 unlabelled, 8 labelled, 8 held out), for the test")
    args = parser.parse_args()
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    py = sys.executable
    start = time.time()
    data = os.path.join(out, "data")

    run("1/4", "data: scenes and their proposals",
        ([py, "tools/run_study.py", "--output", out, "--prepare-only", "--transfer-scenes", LABELLED_SCENES,
          *(["--smoke"] if args.smoke else [])], os.path.join(out, "data.log")))
    registrations = [
        "--register-coco", f"study_train_n{LABELLED_SCENES}:{data}/train/annotations_n{LABELLED_SCENES}.json:"
        f"{data}/train/images",
        "--register-coco", f"study_val:{data}/val/annotations.json:{data}/val/images"]

    pretrain_dir = os.path.join(out, "pretrain")
    run("2/4", f"SoCo pretraining, {args.pretrain_iters} iterations",
        ([py, "tools/pretrain_net.py", "--config-file", "configs/learning/soco_r18_fpn.yaml",
         "DATASETS.IMAGE_FOLDER_REGISTER", f"('demo_scenes:{data}/pretrain/images',)",
         "DATASETS.COCO_JSON_REGISTER", f"('study_val:{data}/val/annotations.json:{data}/val/images',)",
         "DATASETS.TRAIN", "('demo_scenes',)", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{data}/proposals.pkl',)",
         "SOLVER.MAX_ITER", args.pretrain_iters, "SOLVER.CHECKPOINT_PERIOD", 100000,
         "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET", "study_val", "SEED", args.seed, "OUTPUT_DIR", pretrain_dir],
         os.path.join(out, "pretrain.log")))

    converted = os.path.join(out, "soco_r18_fpn.pkl")
    run("3/4", "conversion to a Detectron2 checkpoint",
        ([py, "tools/convert_ckpt.py", os.path.join(pretrain_dir, "model_final.pth"), converted, *TRANSFER],
         os.path.join(out, "convert.log")))

    finetune_dirs = {"SoCo": (os.path.join(out, "finetune_soco"), converted),
                     "random init": (os.path.join(out, "finetune_random_init"), "")}
    run("4/4", f"Faster R-CNN fine-tuning on {LABELLED_SCENES} labelled scenes from SoCo and from random init, "
        "side by side",
        *(([py, "tools/train_net.py", "--config-file", FINETUNE_CONFIG, *registrations, "MODEL.WEIGHTS", weights,
            "SEED", args.seed, "OUTPUT_DIR", finetune_dir, *args.finetune_opts], finetune_dir + ".log")
          for finetune_dir, weights in finetune_dirs.values()))
    detectors = {}
    for name, (finetune_dir, _) in finetune_dirs.items():
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
