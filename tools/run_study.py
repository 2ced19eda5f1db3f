#!/usr/bin/env python
"""A small, seeded reproduction study of the orderings SoCo and OAC claim (``make study``): probes and detection
transfer, with every arm's health.

Pretraining arms, on the same unlabelled multi-object scenes (the SSL ones in the CPU learning regime of
configs/learning/, docs/results.md):

- ``random_init``: no pretraining;
- ``supervised``: a ResNet trained with labels to classify the objects of the same scenes;
- ``supervised_detector``: the positive control of the detection transfer, Faster R-CNN trained with the labels of
  the same scenes (configs/transfer/faster_rcnn_r18_fpn_scenes_pretrain_labels.yaml), transferred like SoCo's full
  transfer;
- ``byol_whole_image``: BYOL on two random crops of the whole image (SoCo's image-level baseline);
- ``soco``: SoCo with FPN, the 4conv1fc box head and scale-aware assignment;
- ``moco_scene``: MoCo-v2 with scene-scene crops (OAC's baseline);
- ``moco_obj_obj_dilate``: MoCo-v2 with obj-obj+dilate crops and separate heads (OAC §4.1).

Pretraining runs with the health monitors (objpretrain/engine/health.py). Each model is converted with
tools/convert_ckpt.py and every arm, random init included, is measured two ways:

- probes on frozen features (tools/linear_eval.py, BatchNorm re-estimated at each probe's resolution): view retrieval
  on held-out scenes, each annotated object's class, and OAC's multi-label image probe, each beside its chance level;
- detection transfer (tools/train_net.py, configs/transfer/): Faster R-CNN R18-FPN fine-tuned on 2 and on 4 labelled
  scenes and evaluated with COCO AP on 128 held-out scenes; SoCo three ways (backbone, backbone + FPN, backbone + FPN
  + box head), the other arms with their ResNet.

Seeds are repeated and reported as mean ± std, with Welch's t-test of every claim (docs/results.md). Every stage is
one of the project's own commands, printed before it runs; results are written as JSON, Markdown tables and plots.

    python tools/run_study.py --output output/study --jobs 2        # the full study (about 2 h 45 min on 2 cores)
    python tools/run_study.py --output output/study --seeds 0 --jobs 2  # one seed of it (58 min)
    python tools/run_study.py --output output/study_smoke --smoke   # one seed, a few iterations per arm
    python tools/run_study.py --output output/study --summarize-only  # tables and plots of what finished
"""
import argparse
import os
import sys
import time

from study.pipeline import ARMS, REPO, SCALES, TRANSFERS, StudyStageError, run_study  # tools/study, beside this script
from study.summary import finished_results, summarize

from objpretrain.utils.atomic_io import atomic_write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "study"))
    parser.add_argument("--smoke", action="store_true", help="one seed, a few iterations per arm (CI)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the scale's seeds")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--pretrain-iters", type=int)
    parser.add_argument("--transfer-scenes", type=int, nargs="+",
                        help="numbers of labelled scenes to fine-tune on (default: the scale's; each needs "
                             "configs/transfer/faster_rcnn_r18_fpn_scenes_n<N>.yaml)")
    parser.add_argument("--transfers", nargs="+", choices=list(TRANSFERS),
                        help="transfer arms to fine-tune (default: the scale's, which leaves out the controls "
                             "'supervised' and 'soco_backbone_pretrained_scale' at full scale)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="arms run side by side, each stage with cores / jobs threads (make study: 2)")
    parser.add_argument("--device", default="cpu", help="MODEL.DEVICE of every stage, e.g. cuda")
    parser.add_argument("--workers", type=int, default=2, help="DATALOADER.NUM_WORKERS of every stage")
    parser.add_argument("--pretrain-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides for every pretraining, e.g. SOLVER.IMS_PER_BATCH 256 (the learning "
                             "configs scale their lr with the square root of the batch)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each arm's .pth checkpoints (by default only its converted .pkl is kept)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the scenes and their proposals, run no arm (so arms can then run in parallel)")
    parser.add_argument("--summarize-only", action="store_true",
                        help="tabulate and plot the arms and seeds that finished under --output, run nothing")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def study_scale(args):
    """The scale (pipeline.SCALES) that ``args`` ask for: smoke or full, with their overrides."""
    scale = dict(SCALES["smoke" if args.smoke else "full"])
    if args.seeds:
        scale["seeds"] = tuple(args.seeds)
    if args.pretrain_iters:
        scale["pretrain_iters"] = args.pretrain_iters
    if args.transfer_scenes:
        scale["transfer_scenes"] = tuple(args.transfer_scenes)
    if args.transfers:
        scale["skip_transfers"] = tuple(name for name in TRANSFERS if name not in args.transfers)
    return scale


def main(argv=None):
    args = parse_args(argv)
    scale = study_scale(args)
    out = os.path.abspath(args.output)
    if args.summarize_only:
        rows, table = summarize(finished_results(out), out)
        print(table)
        return rows
    start = time.time()
    try:
        results = run_study(out, scale, args.arms, sys.executable, args.keep_checkpoints, args.device, args.workers,
                            args.pretrain_opts, args.prepare_only, args.jobs)
    except StudyStageError as error:
        sys.exit(str(error))
    if args.prepare_only:
        print(f"data and proposals ready in {out}")
        return []
    rows, table = summarize(results, out)
    wall = time.time() - start
    atomic_write_json(os.path.join(out, "study_info.json"),
                      {"scale": scale, "arms": args.arms, "jobs": args.jobs, "device": args.device,
                       "pretrain_opts": args.pretrain_opts, "wall_seconds": wall}, indent=1)
    print(table)
    print(f"study finished in {wall / 60:.1f} min; results in {out}")
    return rows


if __name__ == "__main__":
    main()
