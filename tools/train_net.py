#!/usr/bin/env python
"""Finetunes and evaluates a Detectron2 detector from a converted pretraining checkpoint (docs/transfer.md).

Detectron2's DefaultTrainer, as MoCo's detection/train_net.py, plus: the evaluator follows the test set's
``evaluator_type`` (COCOEvaluator with bbox, and segm when MASK_ON; PascalVOCDetectionEvaluator; LVISEvaluator), and
COCO-json sets register from the command line (``--register-coco name:json:image_root``, repeatable) or
from DATASETS.COCO_JSON_REGISTER. PreciseBN runs where the config enables TEST.PRECISE_BN.

    python tools/train_net.py --config-file configs/finetune/mask_rcnn_R_50_FPN_1x.yaml --num-gpus 8 \
        MODEL.WEIGHTS output/soco_r50_fpn.pkl
"""
import logging

import objpretrain  # noqa: F401,I001  (first: registers components and silences a dependency's import warning)
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from objpretrain.config import add_objpretrain_config, merge_config_file
from objpretrain.data.build import build_resumable_detection_train_loader
from objpretrain.data.datasets import register_datasets_from_cfg
from objpretrain.engine.checkpoint import AtomicDetectionCheckpointer
from objpretrain.engine.distributed import install as install_device_ddp
from objpretrain.engine.preflight import check_runnable, exit_on_config_error
from objpretrain.engine.resumable import ResumableDataStreamMixin
from objpretrain.evaluation.detection import build_detection_evaluator

logger = logging.getLogger("objpretrain.train_net")


class Trainer(ResumableDataStreamMixin, DefaultTrainer):
    """DefaultTrainer with crash-safe checkpoints (``AtomicDetectionCheckpointer``: atomic saves, and
    ``--resume`` falls back to the newest readable checkpoint) and a resume that continues the exact data
    stream and step RNGs (``ResumableDataStreamMixin``); see docs/reliability.md. Its DDP model is built on the
    model's device, so ``--num-gpus N`` also runs on a CPU machine (objpretrain.engine.distributed)."""

    def __init__(self, cfg):
        install_device_ddp()
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_resumable_detection_train_loader(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ makes a plain DetectionCheckpointer just before it builds the hooks, which use it.
        plain = self.checkpointer
        self.checkpointer = AtomicDetectionCheckpointer(
            plain.model, plain.save_dir, save_to_disk=plain.save_to_disk, **plain.checkpointables
        )
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_detection_evaluator(cfg, dataset_name, output_folder)


def build_config(args):
    """The config of the command line, with its datasets registered."""
    cfg = get_cfg()
    add_objpretrain_config(cfg)
    merge_config_file(cfg, args.config_file)
    cfg.merge_from_list(args.opts)
    # Recorded in the config so that the run's saved config.yaml re-registers them.
    cfg.DATASETS.COCO_JSON_REGISTER = list(cfg.DATASETS.COCO_JSON_REGISTER) + list(args.register_coco)
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    return cfg


def setup(args):
    cfg = build_config(args)
    default_setup(cfg, args)
    # default_setup configures the detectron2 and fvcore loggers; ours (skips, resume, fall-backs) too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="objpretrain", abbrev_name="op")
    if not cfg.MODEL.WEIGHTS and not args.eval_only:
        logger.warning("MODEL.WEIGHTS is empty: the detector trains from scratch (the 'Scratch' rows of the "
                       "papers' tables). Pass the converted checkpoint as MODEL.WEIGHTS path/to/model.pkl.")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # The final evaluation's results (DefaultTrainer keeps them for verify_results; empty without TEST sets).
    return getattr(trainer, "_last_eval_results", {})


def preflight(args):
    """Registers the config's datasets and checks it can run here, before any process is launched."""
    cfg = build_config(args)
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
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    exit_on_config_error("train_net.py", lambda: preflight(args))
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
