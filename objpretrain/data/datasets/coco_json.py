"""COCO-format detection sets for finetuning: user sets from the command line or the config, and Mini COCO.

``register_coco_json("name:json_file:image_root")`` registers a user set (as Detectron2's
``register_coco_instances``, evaluated with COCOEvaluator); ``objpretrain.data.datasets.register_datasets_from_cfg``
does so for every entry of DATASETS.COCO_JSON_REGISTER. Importing this module registers Mini COCO (SoCo §4.5: 5% and 10%
of COCO train2017, written by tools/make_mini_coco.py) as ``coco_2017_train_mini5`` and
``coco_2017_train_mini10`` under ``$DETECTRON2_DATASETS/coco`` (nothing is read until used). The standard
COCO and Pascal VOC names (coco_2017_train, voc_2007_trainval, ...) are Detectron2's builtin ones.

The sets registered here are read by :func:`load_checked_coco_json`: :func:`check_coco_json`, then Detectron2's
``load_coco_json``. The check stops what Detectron2 would take silently or fail on without naming the file.
"""
import collections
import json
import logging
import math
import numbers
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

__all__ = [
    "MINI_COCO_PERCENTS",
    "check_coco_json",
    "load_checked_coco_json",
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
    DatasetCatalog.register(name, lambda: load_checked_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
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
    return load_checked_coco_json(json_file, image_root, name)


def load_checked_coco_json(json_file, image_root, name):
    """Detectron2's ``load_coco_json(json_file, image_root, name)`` after :func:`check_coco_json`; what Detectron2
    still refuses (a category id missing from ``categories``, a bad segmentation) is a ValueError naming the file."""
    check_coco_json(json_file)
    try:
        return load_coco_json(json_file, image_root, name)
    except (AssertionError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{json_file}: {type(error).__name__}: {error}") from error


def check_coco_json(json_file):
    """Raises a ValueError naming ``json_file`` and the entry for what Detectron2's loader would take silently or
    fail on without naming the file; logs a count of the boxes its mapper drops or clips.

    Errors: not UTF-8 JSON (truncated, another encoding), not an object with an ``images`` list, an image
    without an int/str ``id``, a ``file_name`` or a positive ``height``/``width``, an image id given twice (pycocotools
    keeps only the last), an annotation without ``id``/``image_id``/``category_id``, a ``bbox`` that is not four
    finite numbers (Detectron2 would clip Inf to the image border and train on it). Logged: boxes with no area and
    boxes reaching outside their image, which Detectron2's mapper drops / clips (it already logs annotations whose
    image_id matches no image).
    """
    try:
        with open(json_file, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))  # the encoding pycocotools reads (a BOM is refused too)
    except Exception as e:
        raise ValueError(f"{json_file}: not a COCO json file ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_file}: a COCO json file is an object with an 'images' list")
    if not data["images"]:
        raise ValueError(f"{json_file}: its 'images' list is empty")
    sizes = {}
    for k, image in enumerate(data["images"]):
        if not (isinstance(image, dict) and isinstance(image.get("id"), (int, str))
                and not isinstance(image["id"], bool) and isinstance(image.get("file_name"), str)
                and _positive(image.get("height")) and _positive(image.get("width"))):
            raise ValueError(f"{json_file}: images[{k}] needs an int or str 'id', a 'file_name' and a positive "
                             f"'height' and 'width'; got {str(image)[:200]}")
        image_id = image["id"]
        if image_id in sizes:
            raise ValueError(f"{json_file}: image id {image_id!r} is given twice (images[{k}]); pycocotools would keep "
                             "only the last")
        sizes[image_id] = (image["width"], image["height"])
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{json_file}: 'annotations' must be a list, not a {type(annotations).__name__}")
    counts = collections.Counter()
    for k, annotation in enumerate(annotations):
        if not (isinstance(annotation, dict) and {"id", "image_id", "category_id"} <= annotation.keys()):
            raise ValueError(f"{json_file}: annotations[{k}] needs 'id', 'image_id' and 'category_id'; got "
                             f"{str(annotation)[:200]}")
        box = annotation.get("bbox")
        if box is None:
            continue
        if not (isinstance(box, list) and len(box) == 4 and all(_finite_number(v) for v in box)):
            raise ValueError(f"{json_file}: annotation {annotation['id']!r} (image {annotation['image_id']!r}): bbox "
                             f"{str(box)[:100]} is not four finite numbers [x, y, width, height]")
        x, y, w, h = box
        if w <= 0 or h <= 0:
            counts["with no area (dropped)"] += 1
        elif annotation["image_id"] in sizes:
            width, height = sizes[annotation["image_id"]]
            if x < 0 or y < 0 or x + w > width or y + h > height:
                counts["reaching outside their image (clipped; dropped if nothing is left)"] += 1
    if counts:
        logger.warning("%s: %s; Detectron2's mapper handles them so", json_file,
                       ", ".join(f"{n} boxes {what}" for what, n in counts.items()))


def _positive(value):
    return _finite_number(value) and value > 0


def _finite_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


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
