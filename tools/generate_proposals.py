#!/usr/bin/env python
"""Computes object proposals for a folder, a list file or a registered dataset (see docs/proposals.md).

Examples:
    python tools/generate_proposals.py --images datasets/demo/unlabeled --output proposals.pkl
    python tools/generate_proposals.py --images demo_trees_train --output trees.pkl --method soco_official
    python tools/generate_proposals.py --images imagenet_train.txt --output part3.pkl --shard 3/8 --resume
    python tools/generate_proposals.py --images coco_2017_train --method file --proposal-file lod.json \\
        --output lod.pkl --no-size-filter --no-aspect-filter
"""
import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger

import objpretrain  # noqa: F401  (registers the demo datasets)
from objpretrain.data.proposals import (
    export_soco_json,
    load_proposal_file,
    parse_shard,
    resolve_inputs,
    run_proposal_job,
)
from objpretrain.data.proposals.cli import add_recipe_arguments, recipe_from_args


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="image folder (recursive), text file of paths, or dataset name")
    parser.add_argument("--output", required=True, help="Detectron2 proposal pickle to write")
    parser.add_argument("--root", help="for a list file: folder the image ids are relative to (default: its folder)")
    parser.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    parser.add_argument("--shard", default="0/1", help="i/n: process the i-th of n blocks of the input")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its journal")
    parser.add_argument("--sync-every", type=int, default=16, help="journal records per fsync")
    parser.add_argument("--soco-json", help="also write the proposals in the official SoCo JSON format")
    parser.add_argument("--no-progress", action="store_true")
    add_recipe_arguments(parser)
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="objpretrain")
    logger = logging.getLogger("objpretrain")
    recipe = recipe_from_args(args)
    shard = parse_shard(args.shard)
    items = resolve_inputs(args.images, root=args.root)
    logger.info("%d images, shard %d/%d, recipe %s", len(items), shard[0], shard[1], recipe.to_dict())
    run_proposal_job(
        items,
        args.output,
        recipe,
        workers=args.workers,
        shard=shard,
        resume=args.resume,
        progress=not args.no_progress,
        sync_every=args.sync_every,
    )
    if args.soco_json:
        export_soco_json(load_proposal_file(args.output), args.soco_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
