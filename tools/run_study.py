#!/usr/bin/env python
"""A small, seeded reproduction study of the orderings SoCo and OAC claim (``make study``), with every arm's health.

Arms, each pretrained on the same unlabelled multi-object scenes in the CPU learning regime of the demo configs
(docs/results.md: weak augmentation, warm-up then cosine, BN heads, EMA 0.99):

- ``random_init``: no pretraining;
- ``byol_whole_image``: BYOL on two random crops of the whole image (SoCo's image-level baseline);
- ``soco``: SoCo with FPN, the 4conv1fc box head and scale-aware assignment;
- ``moco_scene``: MoCo-v2 with scene-scene crops (OAC's baseline);
- ``moco_obj_obj_dilate``: MoCo-v2 with obj-obj+dilate crops and separate heads (OAC §4.1).

Pretraining runs with the health monitors (objpretrain/engine/health.py): spread of the embeddings, losses beside
their collapse values, backbone movement and view retrieval on the held-out split, against the initial weights.
Each pretrained model is converted with tools/convert_ckpt.py (``--to d2-fpn``) and every arm, random init
included, is measured on frozen features with tools/linear_eval.py, BatchNorm statistics re-estimated at each
probe's resolution: view retrieval on held-out scenes (the pretext task), classification of each annotated object
(top-1) and multi-label image classification (mAP, OAC's protocol), each beside its chance level. With
``--finetune-iters N`` each arm is also fine-tuned as a Faster R-CNN R18-FPN (COCO AP); at 400 CPU iterations that
AP is dominated by the batch order, so the full CPU study leaves it out. Seeds are repeated and reported as mean
± std. Every stage is one of the project's own commands, printed before it runs; results are written as JSON, a
Markdown table and plots (the monitors' curves included).

Claims checked (see docs/results.md), each with Welch's t-test over seeds on every metric: every pretrained arm
> random init; SoCo > whole-image BYOL > random init (SoCo Table 4); obj-obj+dilate > scene cropping on
multi-object images (OAC Tables 4 to 6).

    python tools/run_study.py --output output/study                 # the full study (about 1 h on 2 cores)
    python tools/run_study.py --output output/study --seeds 0       # one seed of it
    python tools/run_study.py --output output/study_smoke --smoke   # one seed, a few iterations per arm
    python tools/run_study.py --output output/study --summarize-only  # tables and plots of what finished
"""
import argparse
import os
import sys
import time

from objpretrain.study.pipeline import ARMS, REPO, SCALES, StudyStageError, run_study
from objpretrain.study.summary import finished_results, summarize
from objpretrain.utils.atomic_io import atomic_write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "study"))
    parser.add_argument("--smoke", action="store_true", help="one seed, a few iterations per arm (CI)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the scale's seeds")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--pretrain-iters", type=int)
    parser.add_argument("--finetune-iters", type=int)
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
    scale = dict(SCALES["smoke" if args.smoke else "full"])
    if args.seeds:
        scale["seeds"] = tuple(args.seeds)
    if args.pretrain_iters:
        scale["pretrain_iters"] = args.pretrain_iters
    if args.finetune_iters:
        scale["finetune_iters"] = args.finetune_iters
    out = os.path.abspath(args.output)
    if args.summarize_only:
        rows, table = summarize(finished_results(out), out)
        print(table)
        return rows
    start = time.time()
    try:
        results = run_study(out, scale, args.arms, sys.executable, args.keep_checkpoints, args.device, args.workers,
                            args.pretrain_opts, args.prepare_only)
    except StudyStageError as error:
        sys.exit(str(error))
    if args.prepare_only:
        print(f"data and proposals ready in {out}")
        return []
    rows, table = summarize(results, out)
    wall = time.time() - start
    atomic_write_json(os.path.join(out, "study_info.json"),
                      {"scale": scale, "arms": args.arms, "device": args.device, "pretrain_opts": args.pretrain_opts,
                       "wall_seconds": wall}, indent=1)
    print(table)
    print(f"study finished in {wall / 60:.1f} min; results in {out}")
    return rows


if __name__ == "__main__":
    main()
