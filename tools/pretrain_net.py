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
import objpretrain  # noqa: F401  (first: registers components and silences a dependency's import warning)

# isort: split
from detectron2.engine import default_argument_parser

from objpretrain.engine import PretrainTrainer
from objpretrain.engine.defaults import build_config, default_setup, launch_after_preflight
from objpretrain.engine.preflight import check_runnable


def main(args):
    if args.eval_only:
        raise SystemExit("pretrain_net.py has no evaluation; finetune the converted weights instead")
    cfg = build_config(args.config_file, args.opts)
    default_setup(cfg, args)
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def preflight(args):
    """Checks the config and that it can run here, before any process is launched."""
    check_runnable(build_config(args.config_file, args.opts), num_processes=args.num_gpus * args.num_machines,
                   pretraining=True)


if __name__ == "__main__":
    launch_after_preflight("pretrain_net.py", preflight, main, default_argument_parser().parse_args())
