#!/usr/bin/env python
"""Converts a pretraining checkpoint for transfer (objpretrain/checkpoint/convert.py, docs/transfer.md).

    python tools/convert_ckpt.py output/soco_r50_fpn/model_final.pth soco_r50_fpn.pkl --to d2-fpn
    python tools/convert_ckpt.py output/soco_r50_c4/model_final.pth soco_r50_c4.pkl --to d2-c4
    python tools/convert_ckpt.py moco_v2_800ep_pretrain.pth.tar moco_v2.pkl --to d2-c4 --unsafe-full-unpickle
    python tools/convert_ckpt.py soco_r50_fpn.pkl soco_r50_torchvision.pth --to torchvision

With --verify-config, the result is checked against the detector that config builds: every converted tensor
must exist there with the same shape, and every backbone / FPN / box-head / res5 tensor of the detector must
be converted. Prints what was converted, dropped and is newly initialized; exits 1 with the reason (naming
the file) when a tensor is missing, a shape disagrees, the file is corrupt or does not fit --to.

No code runs from the input: a file that holds Python objects besides tensors and arrays (released MoCo
checkpoints keep an argparse Namespace) is refused, naming the objects, unless --unsafe-full-unpickle is given
for a file whose source you trust. The output holds numpy arrays (or tensors) only and loads everywhere without it.
"""
import argparse
import logging
import sys

from objpretrain.checkpoint import DROPPABLE_PARTS, TARGETS, CheckpointError, convert_checkpoint, format_report
from objpretrain.utils.safe_pickle import UnsafePickleError


def build_model_state_dict(config_file, opts):
    """State dict of the detector ``config_file`` builds, on the CPU."""
    from detectron2.modeling import build_model

    import objpretrain  # noqa: F401  (Res5ROIHeadsExtraNorm)
    from objpretrain.config import get_pretrain_cfg

    cfg = get_pretrain_cfg(config_file, list(opts) + ["MODEL.DEVICE", "cpu"])
    return build_model(cfg).state_dict()


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint to convert (.pth, .pth.tar, .pt or Detectron2 .pkl)")
    parser.add_argument("output", help="output file: .pkl for the d2-* targets, .pth for torchvision")
    parser.add_argument("--to", required=True, choices=TARGETS, help="target format")
    parser.add_argument("--encoder", default="online", choices=("online", "target"),
                        help="which network of a two-network checkpoint to convert (default: online)")
    parser.add_argument("--drop", default="", metavar="PARTS",
                        help=f"comma-separated parts of {DROPPABLE_PARTS} that --to d2-fpn leaves out (new "
                             "at fine-tuning): SoCo's alignment ablation, e.g. --drop box_head for backbone + FPN; "
                             "--drop stem re-initializes the ResNet's first conv")
    parser.add_argument("--keep-weight-scale", action="store_true",
                        help="keep the pretrained norms of convs that a BatchNorm follows; by default each gets its "
                             "initializer's norm (same function, a fresh layer's fine-tuning learning rate; "
                             "docs/transfer.md)")
    parser.add_argument("--verify-config", metavar="FILE",
                        help="a d2-fpn/d2-c4 finetune config to check the result against")
    parser.add_argument("--verbose", action="store_true", help="list every tensor instead of every module")
    parser.add_argument("--verify-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="overrides of --verify-config (e.g. MODEL.RESNETS.NORM BN)")
    parser.add_argument("--unsafe-full-unpickle", action="store_true",
                        help="read an input that holds Python objects with the full unpickler, which runs any code "
                             "the file holds: only for a file from a source you trust")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        model_state_dict = build_model_state_dict(args.verify_config, args.verify_opts) if args.verify_config else None
        drop = tuple(part for part in args.drop.split(",") if part)
        conversion, new = convert_checkpoint(args.input, args.output, args.to, args.encoder, model_state_dict,
                                             drop=drop, keep_weight_scale=args.keep_weight_scale,
                                             unsafe_full_unpickle=args.unsafe_full_unpickle)
    except (CheckpointError, FileNotFoundError, UnsafePickleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(conversion, new, verbose=args.verbose))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
