#!/usr/bin/env python
"""Per-image time of the pretraining mappers against a naive reference pipeline, measured in the same run.

The references do what a straightforward implementation would: PIL decodes the full-size JPEG, then
torchvision.transforms.v2 builds each view.

- SoCo: (boxes as ``tv_tensors.BoundingBoxes``) resize to V1, random-resized-crop V2, downsample V3, then
  BYOL's flip / colour jitter / grayscale / blur / solarize on each view.
- OAC (obj-obj+dilate, 224-px views): the same two crop rectangles as our mapper draws (its crop sampler, so
  the reference differs only in the pixel work), each ``resized_crop`` from the full image, then MoCo-v2's
  flip / colour jitter / grayscale / blur.

Our mappers decode once at reduced size (JPEG draft), resize with PyTorch's uint8 antialiased kernel, and run
the colour ops with OpenCV on view-sized uint8 arrays (docs/performance.md). tests/test_performance_equivalence.py
checks that their views equal these references' (photometric ops off) or match their statistics (ops on).

Both run on one thread (``torch.set_num_threads(1)``), as they do inside data-loader workers, on the same
synthetic photographs (smooth gradients, shapes and noise, saved as quality-90 JPEGs) with random proposals.
Runs alternate between the pipelines so machine load affects both alike; the median over repeats of the CPU
time per image (``time.process_time``, one thread) is reported.

Example:
    python bench/mappers.py --num-images 24 --width 1024 --height 768 --repeats 3
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms import v2

from objpretrain.config import get_pretrain_cfg
from objpretrain.data.build import build_mapper


def make_photos(out_dir, num_images, width, height, proposals_per_image=40, seed=0):
    """JPEG "photographs" and dataset dicts with random proposals in original pixels."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    records = []
    for index in range(num_images):
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-0.3, 0.3, size=(3, 2))
        pixels = base + xs[..., None] * slope[:, 0] * 255 / width + ys[..., None] * slope[:, 1] * 255 / height
        pixels += rng.normal(0, 12, size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.8)
            x1, y1 = x0 + rng.uniform(0.05, 0.4) * width, y0 + rng.uniform(0.05, 0.4) * height
            draw.ellipse([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = os.path.join(out_dir, f"{index:04d}.jpg")
        image.save(path, quality=90)
        xy = rng.uniform(0, 0.7, size=(proposals_per_image, 2)) * [width, height]
        wh = rng.uniform(0.15, 0.5, size=(proposals_per_image, 2)) * [width, height]
        boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).astype(np.float32)
        records.append({"file_name": path, "image_id": str(index), "height": height, "width": width,
                        "proposal_boxes": boxes, "proposal_bbox_mode": BoxMode.XYXY_ABS})
    return records


class NaiveSoCoReference:
    """SoCo's views with PIL full-size decoding and torchvision.transforms.v2 per view (the baseline)."""

    def __init__(self, cfg):
        soco = cfg.INPUT.SOCO
        size = soco.VIEW_SIZE
        self.num_proposals = soco.NUM_PROPOSALS
        self.to_v1 = v2.Resize((size, size), antialias=True)
        self.to_v2 = v2.RandomResizedCrop(size, scale=tuple(soco.CROP_SCALE), ratio=tuple(soco.CROP_RATIO))
        self.to_v3 = v2.Resize((soco.V3_SIZE, soco.V3_SIZE), antialias=True) if soco.V3_SIZE else None

        def byol_view(view):
            return v2.Compose([
                v2.RandomHorizontalFlip(soco.HFLIP_PROB),
                v2.RandomApply([v2.ColorJitter(*soco.COLOR_JITTER)], p=soco.COLOR_JITTER_PROB),
                v2.RandomGrayscale(soco.GRAYSCALE_PROB),
                v2.RandomApply([v2.GaussianBlur(23, sigma=tuple(soco.BLUR_SIGMA))], p=soco.BLUR_PROB[view]),
                v2.RandomSolarize(128, p=soco.SOLARIZE_PROB[view]),
            ])

        self.first_view, self.other_views = byol_view(0), byol_view(1)

    def __call__(self, record):
        image = Image.open(record["file_name"]).convert("RGB")
        pick = np.random.choice(len(record["proposal_boxes"]), self.num_proposals, replace=False)
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(record["proposal_boxes"][pick]), format="XYXY", canvas_size=(image.height, image.width)
        )
        v1 = self.to_v1(tv_tensors.Image(v2.functional.pil_to_tensor(image)), boxes)
        views = [v1, self.to_v2(*v1)]
        if self.to_v3 is not None:
            views.append(self.to_v3(*views[1]))
        augmented = [self.first_view(*views[0])] + [self.other_views(*view) for view in views[1:]]
        return {"views": [view for view, _ in augmented], "boxes": [boxes for _, boxes in augmented]}


def moco_v2_view(oac, size):
    """MoCo-v2's per-view augmentation (as the OAC mapper's, with a blur kernel of 10% of the view)."""
    kernel = int(np.ceil(0.1 * size)) // 2 * 2 + 1
    return v2.Compose([
        v2.RandomHorizontalFlip(oac.HFLIP_PROB),
        v2.RandomApply([v2.ColorJitter(*oac.COLOR_JITTER)], p=oac.COLOR_JITTER_PROB),
        v2.RandomGrayscale(oac.GRAYSCALE_PROB),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=oac.BLUR_PROB),
    ])


class NaiveOACReference:
    """OAC's two views (and the whole-image view when the localization loss is on) with PIL full-size decoding
    and torchvision.transforms.v2 per view; the crop rectangles come from ``OACMapper.sample_crops`` with the
    same random draws as the mapper, so with the same seed both render the same crops."""

    def __init__(self, cfg):
        from objpretrain.data.oac_mapper import OACMapper

        self.crops = OACMapper(cfg)
        self.size = cfg.INPUT.OAC.CROP_SIZE
        self.augment = moco_v2_view(cfg.INPUT.OAC, self.size)

    def __call__(self, record):
        image = v2.functional.pil_to_tensor(Image.open(record["file_name"]).convert("RGB"))
        height, width = image.shape[1:]
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        crops = self.crops.sample_crops(record, height, width, rng)[:2]
        views = [
            self.augment(v2.functional.resized_crop(image, y0, x0, y1 - y0, x1 - x0, [self.size, self.size],
                                                    antialias=True))
            for x0, y0, x1, y1 in crops
        ]
        output = {"view1": views[0], "view2": views[1], "rotation_label": int(rng.integers(self.crops.num_rotations))}
        if self.crops.with_localization:
            output["whole_image"] = self.augment(v2.functional.resize(image, [self.size, self.size], antialias=True))
        return output


def soco_cfg():
    return get_pretrain_cfg(None, ["MODEL.META_ARCHITECTURE", "SoCo"])


def oac_cfg():
    """The OAC mapper at the paper's view size (224) and crop mode (obj-obj+dilate, δ = 0.1); s_min fixed at
    COCO's 0.51 (OAC §5) instead of estimated from a dataset."""
    cfg = get_pretrain_cfg(None, ["MODEL.META_ARCHITECTURE", "OACMoCo"])
    cfg.INPUT.OAC.CROP_SCALE_MIN = 0.51
    return cfg


# name -> (config, our mapper's factory, naive reference's factory).
PIPELINES = {
    "soco": (soco_cfg, build_mapper, NaiveSoCoReference),
    "oac": (oac_cfg, build_mapper, NaiveOACReference),
}


def time_per_image(pipeline, records):
    """CPU milliseconds per image: on a shared machine, CPU time is far steadier than wall time."""
    start = time.process_time()
    for record in records:
        pipeline(record)
    return (time.process_time() - start) / len(records) * 1000.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mappers", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--num-images", type=int, default=24)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        records = make_photos(out_dir, args.num_images, args.width, args.height)
        for name in args.mappers:
            make_cfg, build_ours, build_reference = PIPELINES[name]
            cfg = make_cfg()
            ours, reference = build_ours(cfg), build_reference(cfg)
            seed_all_rng(0)
            ours(records[0]), reference(records[0])  # warm-up (imports, caches)
            timings = {"ours": [], "reference": []}
            for _ in range(args.repeats):
                timings["ours"].append(time_per_image(ours, records))
                timings["reference"].append(time_per_image(reference, records))
            ours_ms, reference_ms = float(np.median(timings["ours"])), float(np.median(timings["reference"]))
            results[name] = {
                "ours_ms_per_image": round(ours_ms, 2),
                "reference_ms_per_image": round(reference_ms, 2),
                "speedup": round(reference_ms / ours_ms, 2),
                "image_size": [args.width, args.height],
                "num_images": args.num_images,
                "repeats": args.repeats,
            }
            print(f"{name}: ours {ours_ms:.1f} ms/image, naive reference {reference_ms:.1f} ms/image, "
                  f"speedup {reference_ms / ours_ms:.2f}x ({args.width}x{args.height} JPEGs, 1 thread, CPU time)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
