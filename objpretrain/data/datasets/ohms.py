"""OHMS, the OpenImages Hard Multi-object Subset (OAC §3), as a multi-label Detectron2 dataset.

OAC §3: images with labelled boxes, with objects of at least 2 distinct classes, keeping only classes with at
least 900 images (212,753 images, 208 classes in the paper). ``build_ohms_subset`` reads OpenImages'
box-annotation CSVs (``ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,...``) and class
descriptions (``LabelName,DisplayName``, with or without a header row) and applies both rules until neither
removes anything (dropping a rare class can leave an image with one class, which then drops other classes
below the threshold...). ``tools/build_ohms.py`` writes the result as JSON; ``register_ohms`` registers it.

JSON layout::

    {"info": {"min_classes_per_image", "min_images_per_class", "counts": {...}, "sources": [...]},
     "categories": [{"id": 0, "label_name": "/m/0bt9lr", "name": "Dog", "num_images": 1234}, ...],
     "images": [{"image_id": "000a1249af2bc5f0", "file_name": "000a1249af2bc5f0.jpg", "labels": [0, 5],
                 "boxes": [[xmin, ymin, xmax, ymax], ...] (normalized to [0, 1]), "box_labels": [0, 0, 5],
                 "height": 768, "width": 1024 (only when the builder was given the images)}, ...]}

Dataset dicts: ``file_name``, ``image_id`` (the OpenImages ImageID), ``labels`` (sorted category ids: the
multi-label target of tools/linear_eval.py) and, when the sizes are known, ``height``, ``width`` and
``annotations`` (XYXY_ABS boxes, for ``INPUT.OAC.USE_GT_BOXES``).
"""
import csv
import json
import logging
import os
from collections import Counter, defaultdict

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["build_ohms_subset", "load_class_descriptions", "load_ohms_json", "register_ohms", "register_all_ohms"]

logger = logging.getLogger(__name__)

BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
_CLASS_HEADER = ("LabelName", "DisplayName")


def load_class_descriptions(path):
    """{LabelName: DisplayName} from OpenImages' class-description CSV (header row optional)."""
    names = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            if not row or (line_number == 1 and tuple(c.strip() for c in row[:2]) == _CLASS_HEADER):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}, line {line_number}: expected 'LabelName,DisplayName', got {row}")
            names[row[0].strip()] = row[1].strip()
    if not names:
        raise ValueError(f"{path}: no class descriptions")
    return names


def _read_boxes(paths, counts):
    """image id -> list of (label, [xmin, ymin, xmax, ymax]); negatives (Confidence 0) are skipped and counted."""
    boxes = defaultdict(list)
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; OpenImages box CSVs have {list(BOX_COLUMNS)}")
            for line_number, row in enumerate(reader, start=2):
                counts["box_rows"] += 1
                if row.get("Confidence", "1").strip() in ("0", "0.0"):
                    counts["negative_rows_skipped"] += 1
                    continue
                try:
                    x0, x1, y0, y1 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
                except ValueError as error:
                    raise ValueError(f"{path}, line {line_number}: bad coordinate ({error})") from error
                if not (0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1):
                    counts["invalid_boxes_skipped"] += 1
                    continue
                boxes[row["ImageID"]].append((row["LabelName"], [x0, y0, x1, y1]))
    return boxes


def build_ohms_subset(box_csvs, class_descriptions, min_classes_per_image=2, min_images_per_class=900,
                      classes=None):
    """The OHMS subset as the JSON-ready dict described in the module docstring.

    Args:
        box_csvs: OpenImages box-annotation CSV path(s).
        class_descriptions: the class-description CSV path.
        min_classes_per_image: keep images with boxes of at least this many distinct kept classes (§3: 2).
        min_images_per_class: keep classes present in at least this many kept images (§3: 900).
        classes: a fixed list of LabelNames (e.g. the training subset's, for a validation split); then only
            the per-image rule applies and category ids follow this list.
    """
    if isinstance(box_csvs, str):
        box_csvs = [box_csvs]
    counts = Counter()
    names = load_class_descriptions(class_descriptions)
    boxes = _read_boxes(box_csvs, counts)
    counts["input_images"] = len(boxes)
    counts["input_classes"] = len({label for entries in boxes.values() for label, _ in entries})
    image_classes = {image: {label for label, _ in entries} for image, entries in boxes.items()}

    if classes is not None:
        kept_classes = set(classes)
        image_classes = {i: c & kept_classes for i, c in image_classes.items()}
        image_classes = {i: c for i, c in image_classes.items() if len(c) >= min_classes_per_image}
        counts["filter_rounds"] = 1
    else:
        rounds = 0
        while True:
            rounds += 1
            multi = {i: c for i, c in image_classes.items() if len(c) >= min_classes_per_image}
            per_class = Counter(label for c in multi.values() for label in c)
            kept_classes = {label for label, n in per_class.items() if n >= min_images_per_class}
            reduced = {i: c & kept_classes for i, c in multi.items()}
            reduced = {i: c for i, c in reduced.items() if len(c) >= min_classes_per_image}
            if reduced == image_classes:
                break
            image_classes = reduced
        counts["filter_rounds"] = rounds
        classes = sorted({label for c in image_classes.values() for label in c})
    class_index = {label: index for index, label in enumerate(classes)}
    unnamed = [label for label in classes if label not in names]
    if unnamed:
        logger.warning("%d classes have no display name in %s (e.g. %s); using the LabelName",
                       len(unnamed), class_descriptions, unnamed[:3])
    counts["classes_without_display_name"] = len(unnamed)

    images, per_class = [], Counter()
    for image_id in sorted(image_classes):
        kept = [(class_index[label], box) for label, box in boxes[image_id] if label in class_index]
        labels = sorted({index for index, _ in kept})
        per_class.update(labels)
        images.append({"image_id": image_id, "file_name": f"{image_id}.jpg", "labels": labels,
                       "boxes": [box for _, box in kept], "box_labels": [index for index, _ in kept]})
    counts["images"] = len(images)
    counts["classes"] = len(classes)
    counts["boxes"] = sum(len(image["boxes"]) for image in images)
    counts["mean_boxes_per_image"] = round(counts["boxes"] / max(1, len(images)), 3)
    counts["mean_classes_per_image"] = round(sum(len(i["labels"]) for i in images) / max(1, len(images)), 3)
    categories = [{"id": index, "label_name": label, "name": names.get(label, label), "num_images": per_class[index]}
                  for label, index in class_index.items()]
    return {
        "info": {"min_classes_per_image": min_classes_per_image, "min_images_per_class": min_images_per_class,
                 "counts": dict(counts), "sources": [os.path.basename(p) for p in box_csvs]},
        "categories": categories,
        "images": images,
    }


def load_ohms_json(json_file, image_root):
    """Dataset dicts of an OHMS JSON file (see the module docstring)."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"OHMS annotation file {json_file!r} does not exist; build it with tools/build_ohms.py")
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("categories", "images"):
        if key not in data:
            raise ValueError(f"{json_file}: not an OHMS file (no {key!r}); build it with tools/build_ohms.py")
    dicts = []
    for image in data["images"]:
        record = {"file_name": os.path.join(image_root, image["file_name"]), "image_id": str(image["image_id"]),
                  "labels": list(image["labels"])}
        if "height" in image and "width" in image:
            height, width = image["height"], image["width"]
            record.update(height=height, width=width, annotations=[
                {"bbox": [x0 * width, y0 * height, x1 * width, y1 * height], "bbox_mode": BoxMode.XYXY_ABS,
                 "category_id": label}
                for (x0, y0, x1, y1), label in zip(image["boxes"], image["box_labels"])
            ])
        dicts.append(record)
    return dicts


def register_ohms(name, json_file, image_root):
    """Registers an OHMS split (lazily loaded) with its class names in the metadata."""
    DatasetCatalog.register(name, lambda: load_ohms_json(json_file, image_root))

    def class_names():
        with open(json_file, encoding="utf-8") as f:
            return [c["name"] for c in json.load(f)["categories"]]

    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="multilabel")
    if os.path.isfile(json_file):
        MetadataCatalog.get(name).set(thing_classes=class_names())


def register_all_ohms(root):
    """``ohms_train`` / ``ohms_val`` from ``<root>/ohms/ohms_{split}.json`` and OpenImages' image folders
    ``<root>/openimages/{train,validation}`` (Detectron2's ``$DETECTRON2_DATASETS`` convention)."""
    for split, folder in (("train", "train"), ("val", "validation")):
        name = f"ohms_{split}"
        if name not in DatasetCatalog.list():
            register_ohms(name, os.path.join(root, "ohms", f"ohms_{split}.json"),
                          os.path.join(root, "openimages", folder))


register_all_ohms(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
