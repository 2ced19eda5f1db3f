#!/usr/bin/env python
"""Object-level self-supervised pretraining (SoCo, OAC) with Detectron2.

The training logic lives in ``objpretrain.engine.PretrainTrainer``; this script only sets up and launches.

Examples:
    # the demo, on a CPU: the demo data and its proposals first (make demo runs all of it)
    python datasets/prepare_demo.py
    python tools/generate_proposals.py --images demo_unlabeled --output datasets/demo/proposals_unlabeled.pkl
    python tools/pretrain_net.py --config-file configs/demo/soco_r18_fpn_demo.yaml
    # the same in the CPU learning regime, with view retrieval in the health monitors
    python tools/pretrain_net.py --config-file configs/learning/soco_r18_fpn.yaml
    # SoCo-R50-FPN, 100 epochs, 8 GPUs on each of 2 machines
    python tools/pretrain_net.py --config-file configs/soco_r50_fpn.yaml --num-gpus 8 \\
        --num-machines 2 --machine-rank 0 --dist-url tcp://host0:12345
    # continue after an interruption (from OUTPUT_DIR/last_checkpoint)
    python tools/pretrain_net.py --config-file configs/soco_r50_fpn.yaml --num-gpus 8 --resume
"""
import os

import objpretrain  # noqa: F401  (first: registers components and silences a dependency's import warning)

# isort: split
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets import register_datasets_from_cfg
from objpretrain.engine import PretrainTrainer
from objpretrain.engine.preflight import check_runnable, exit_on_config_error


def setup(args):
    cfg = get_pretrain_cfg(args.config_file, args.opts)
    register_datasets_from_cfg(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup configures the detectron2 and fvcore loggers; ours (skips, resume, fall-backs) too.
    logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="objpretrain", abbrev_name="op")
    logger.info("Rank %d: process id %d", comm.get_rank(), os.getpid())  # which process to look at when one hangs
    return cfg


def main(args):
    if args.eval_only:
        raise SystemExit("pretrain_net.py has no evaluation; finetune the converted weights instead")
    cfg = setup(args)
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def preflight(args):
    """Registers the config's datasets and checks it can run here, before any process is launched."""
    cfg = get_pretrain_cfg(args.config_file, args.opts)
    register_datasets_from_cfg(cfg)
    check_runnable(cfg, num_processes=args.num_gpus * args.num_machines, pretraining=True)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    exit_on_config_error("pretrain_net.py", lambda: preflight(args))
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
