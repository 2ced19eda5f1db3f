#!/usr/bin/env python
"""Draws one training sample's SoCo views with their boxes, numbered so a proposal can be followed across views.

Uses the config's dataset, proposal files and mapper (with its augmentations), so it shows what the model sees.

Examples:
    python tools/visualize_views.py --config-file configs/soco_r50_fpn.yaml --index 3 --output views.png
    python tools/visualize_views.py --output views.png DATASETS.TRAIN "('demo_unlabeled',)" INPUT.SOCO.V4_SIZE 192
"""
import argparse
import logging
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from objpretrain.config import get_pretrain_cfg  # noqa: E402
from objpretrain.data.build import build_mapper, get_pretrain_dataset_dicts  # noqa: E402
from objpretrain.modeling.contract import dataset_mapper_name  # noqa: E402

logger = logging.getLogger("objpretrain.visualize_views")


def draw_views(sample, title=""):
    """A matplotlib figure with one panel per view; box i has the same colour and number in every panel. A view with
    its own proposals (INPUT.SOCO.OWN_PROPOSAL_VIEWS) adds a panel of V1 with V1's boxes for that view."""
    panels = list(zip(sample["view_names"], sample["views"], sample["boxes"]))
    panels[1:1] = [(f"v1 for {name}", sample["views"][0], boxes) for name, boxes in sample.get("v1_boxes", {}).items()]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    for axis, (name, view, boxes) in zip(axes[0], panels):
        axis.imshow(view.permute(1, 2, 0).numpy())
        for row, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            color = colors(row % 10)
            axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=2))
            axis.text(x0 + 2, y0 + 2, str(row), color="white", fontsize=9, va="top",
                      bbox=dict(facecolor=color, edgecolor="none", pad=1))
        axis.set_title(f"{name} ({view.shape[-1]}x{view.shape[-2]})")
        axis.set_xlim(0, view.shape[-1])
        axis.set_ylim(view.shape[-2], 0)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="pretraining config (SoCo's defaults if omitted)")
    parser.add_argument("--index", type=int, default=0, help="index of the image in the training dataset dicts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops, jitter and augmentations")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    setup_logger(name="objpretrain")
    defaults = [] if args.config_file else ["MODEL.META_ARCHITECTURE", "SoCo"]
    cfg = get_pretrain_cfg(args.config_file or None, defaults + list(args.opts))
    mapper_name = dataset_mapper_name(cfg)
    if mapper_name != "SoCoMapper":
        parser.error(f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} takes the {mapper_name}, not SoCo views")
    dicts = get_pretrain_dataset_dicts(cfg)
    if not 0 <= args.index < len(dicts):
        parser.error(f"--index {args.index} is outside the {len(dicts)} images of {list(cfg.DATASETS.TRAIN)}")
    record = dicts[args.index]
    seed_all_rng(args.seed)
    sample = build_mapper(cfg)(record)
    if sample is None:
        logger.error("%s could not be read; see the warning above", record["file_name"])
        return 1
    num_proposals = len(record.get("proposal_boxes", []))
    figure = draw_views(sample, f"{record['file_name']} ({num_proposals} proposals)")
    figure.savefig(args.output, dpi=100)
    logger.info("Wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
