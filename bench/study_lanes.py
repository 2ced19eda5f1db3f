#!/usr/bin/env python
"""Throughput of the study's fine-tuning run alone with every core against runs side by side with one core each,
the choice behind ``tools/run_study.py --jobs`` (``make study`` runs ``--jobs 2``).

Makes a few of the study's scenes in a temporary folder, then times ``tools/train_net.py`` with the study's
transfer config (Faster R-CNN R18-FPN, 128 px, batch 4) for ``--iters`` iterations, evaluation off: once alone with
``--cores`` threads (the reference), then ``--cores`` runs at once with one thread each. The seconds per iteration
come from each run's own log (Detectron2's "Overall training speed", warm-up iterations excluded), so process
start and imports do not count. Prints one JSON line: both timings and the ratio of iterations per second
side by side to the reference's::

    python bench/study_lanes.py  # needs: an idle machine for about 2 minutes (a benchmark)
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEED = re.compile(r"Overall training speed: \d+ iterations in \S+ \(([\d.]+) s / it\)")


def finetune_command(data, output, iters):
    train, val = (f"{split}:{data}/{split}/annotations.json:{data}/{split}/images" for split in ("train", "val"))
    return [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
            os.path.join(REPO, "configs", "transfer", "faster_rcnn_r18_fpn_scenes_n2.yaml"),
            "--register-coco", train.replace("train:", "study_train_n2:", 1),
            "--register-coco", val.replace("val:", "study_val:", 1),
            "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0",
            "DATASETS.TEST", "()", "SEED", "0", "OUTPUT_DIR", output, "DATALOADER.NUM_WORKERS", "0"]


def seconds_per_iteration(commands, threads):
    """Runs ``commands`` at once, each with ``threads`` intra-op threads; returns each one's seconds per iteration."""
    from study.pipeline import thread_capped_env

    runs = [subprocess.Popen(cmd, cwd=REPO, env=thread_capped_env(threads), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for cmd in commands]
    timings = []
    for run in runs:
        log = run.communicate()[0]
        if run.returncode != 0:
            sys.exit(f"fine-tuning failed (exit {run.returncode}):\n{log[-3000:]}")
        timings.append(float(SPEED.search(log).group(1)))
    return timings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="cores, and runs side by side")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(REPO, "tools"))
    from study.pipeline import SCENES

    from objpretrain.data.datasets.scenes import make_scene_coco

    with tempfile.TemporaryDirectory() as tmp:
        for split, count, seed in (("train", 2, 2000), ("val", 2, 3000)):
            make_scene_coco(os.path.join(tmp, split), num_images=count, image_size=128, seed=seed, **SCENES)
        alone = seconds_per_iteration([finetune_command(tmp, os.path.join(tmp, "alone"), args.iters)], args.cores)[0]
        side_by_side = seconds_per_iteration(
            [finetune_command(tmp, os.path.join(tmp, f"lane{i}"), args.iters) for i in range(args.cores)], 1)
    # iterations per second of all the runs side by side, over the reference's
    ratio = sum(alone / seconds for seconds in side_by_side)
    print(json.dumps({"iters": args.iters, "cores": args.cores, "alone_s_per_it": alone,
                      "side_by_side_s_per_it": side_by_side, "throughput_ratio": round(ratio, 3)}))
    return ratio


if __name__ == "__main__":
    main()
