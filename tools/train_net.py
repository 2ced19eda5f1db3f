#!/usr/bin/env python
"""Finetunes and evaluates a Detectron2 detector from a converted pretraining checkpoint (docs/transfer.md).

The training logic lives in ``objpretrain.engine.finetune`` (``FinetuneTrainer``: Detectron2's DefaultTrainer, as
MoCo's detection/train_net.py, with the evaluator of the test set's ``evaluator_type``, crash-safe checkpoints and an
exact resume); this script only sets up and launches. COCO-json sets register from the command line
(``--register-coco name:json:image_root``, repeatable) or from DATASETS.COCO_JSON_REGISTER.

    python tools/train_net.py --config-file configs/finetune/mask_rcnn_R_50_FPN_1x.yaml --num-gpus 8 \
        MODEL.WEIGHTS output/soco_r50_fpn.pkl
"""
import objpretrain  # noqa: F401  (first: registers components and silences a dependency's import warning)

# isort: split
from detectron2.engine import default_argument_parser

from objpretrain.engine.defaults import build_config, default_setup, launch_after_preflight
from objpretrain.engine.finetune import finetune
from objpretrain.engine.preflight import check_runnable


def main(args):
    cfg = build_config(args.config_file, args.opts, args.register_coco)
    default_setup(cfg, args)
    return finetune(cfg, resume=args.resume, eval_only=args.eval_only)


def preflight(args):
    """Checks the config and that it can run here, before any process is launched."""
    cfg = build_config(args.config_file, args.opts, args.register_coco)
    check_runnable(cfg, proposal_files=cfg.MODEL.LOAD_PROPOSALS, num_processes=args.num_gpus * args.num_machines)


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--register-coco",
        action="append",
        default=[],
        metavar="NAME:JSON:IMAGE_ROOT",
        help="register a COCO-format dataset under NAME (repeatable); then use it in DATASETS.TRAIN / TEST",
    )
    return parser


if __name__ == "__main__":
    launch_after_preflight("train_net.py", preflight, main, get_parser().parse_args())
