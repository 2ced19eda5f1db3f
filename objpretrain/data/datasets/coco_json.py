"""COCO-format detection sets for finetuning: user sets from the command line or the config, and Mini COCO.

``register_coco_json("name:json_file:image_root")`` registers a user set (Detectron2's
``register_coco_instances``, evaluated with COCOEvaluator); ``objpretrain.data.datasets.register_datasets_from_cfg``
does so for every entry of DATASETS.COCO_JSON_REGISTER. Importing this module registers Mini COCO (SoCo §4.5: 5% and 10%
of COCO train2017, written by tools/make_mini_coco.py) as ``coco_2017_train_mini5`` and
``coco_2017_train_mini10`` under ``$DETECTRON2_DATASETS/coco`` (nothing is read until used). The standard
COCO and Pascal VOC names (coco_2017_train, voc_2007_trainval, ...) are Detectron2's builtin ones.
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

__all__ = [
    "MINI_COCO_PERCENTS",
    "mini_coco_json",
    "parse_coco_json_spec",
    "register_coco_json",
    "register_mini_coco",
]

logger = logging.getLogger(__name__)

# SoCo §4.5: "we randomly select 5% or 10% of the training data from COCO train2017".
MINI_COCO_PERCENTS = (5, 10)


def parse_coco_json_spec(spec):
    """"name:json_file:image_root" -> (name, json_file, image_root); raises ValueError naming the spec."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError(f"COCO json dataset {spec!r}: expected 'name:json_file:image_root'")
    return tuple(p.strip() for p in parts)


def register_coco_json(spec):
    """Registers the COCO-format set of ``spec`` ("name:json_file:image_root"); returns its name.

    Registering the same spec again is a no-op; the same name with other files is an error, as is a
    missing json file or image folder (named in the message).
    """
    name, json_file, image_root = parse_coco_json_spec(spec)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json dataset {name!r}: annotation file {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"COCO json dataset {name!r}: image folder {image_root} does not exist")
    if name in DatasetCatalog.list():
        metadata = MetadataCatalog.get(name)
        registered = (metadata.get("json_file"), metadata.get("image_root"))
        if registered == (json_file, image_root):
            return name
        raise ValueError(f"dataset {name!r} is already registered with {registered}, not ({json_file}, {image_root})")
    register_coco_instances(name, {}, json_file, image_root)
    logger.info(f"Registered COCO json dataset {name}: {json_file}, images in {image_root}")
    return name


def mini_coco_json(root, percent):
    """Where tools/make_mini_coco.py writes the ``percent``% subset of train2017 under ``root``."""
    return os.path.join(root, "coco", "annotations", f"instances_train2017_mini{percent}.json")


def _load_mini_coco(json_file, image_root, name):
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"{name}: {json_file} does not exist; create it with tools/make_mini_coco.py (docs/transfer.md)"
        )
    return load_coco_json(json_file, image_root, name)


def register_mini_coco(root):
    """Registers coco_2017_train_mini5 / _mini10 (images from coco/train2017, COCO's 80 categories)."""
    image_root = os.path.join(root, "coco", "train2017")
    for percent in MINI_COCO_PERCENTS:
        name = f"coco_2017_train_mini{percent}"
        if name in DatasetCatalog.list():
            continue
        json_file = mini_coco_json(root, percent)
        DatasetCatalog.register(name, lambda j=json_file, n=name: _load_mini_coco(j, image_root, n))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco", **_get_builtin_metadata("coco")
        )


register_mini_coco(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
