"""The offline demo datasets built by ``datasets/prepare_demo.py``.

- ``demo_unlabeled``: real photographs bundled with scikit-image plus the tree tiles, for pretraining.
- ``demo_trees_train`` / ``demo_trees_val``: aerial tree crowns from the DeepForest wheel's sample data,
  tiled to at most 512 px, one category ("tree"), boxes only; evaluated with COCOEvaluator.
- ``demo_trees_voc_train`` / ``demo_trees_voc_val``: the same tiles and boxes in Pascal VOC layout, evaluated
  with PascalVOCDetectionEvaluator (VOC2007's 11-point AP50 and the all-point AP), as the C4 chain is in the
  papers.

The root is ``$OBJPRETRAIN_DEMO_ROOT`` or ``<checkout>/datasets/demo``, so tools work from any directory.
"""
import os

from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc

from .image_folder import register_image_folder

_DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "datasets", "demo")


def demo_root():
    return os.path.abspath(os.environ.get("OBJPRETRAIN_DEMO_ROOT", _DEFAULT_ROOT))


def register_demo_datasets(root=None):
    root = root or demo_root()
    register_image_folder("demo_unlabeled", os.path.join(root, "unlabeled"))
    for split in ("train", "val"):
        register_coco_instances(
            f"demo_trees_{split}",
            {},
            os.path.join(root, "trees", f"annotations_{split}.json"),
            os.path.join(root, "trees", "images"),
        )
        name = f"demo_trees_voc_{split}"
        register_pascal_voc(name, os.path.join(root, "trees_voc"), split, 2007, ["tree"])
        # As Detectron2's builtin VOC registration does (register_pascal_voc leaves it to the caller).
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"
