"""Dataset registration. Importing this module registers the demo datasets (lazily: nothing is read until used)."""
from . import builtin_pretrain  # noqa: F401  (imagenet_train_unlabeled under $DETECTRON2_DATASETS)
from .demo import demo_root, register_demo_datasets
from .image_folder import list_images, load_image_folder, register_image_folder, register_image_folder_spec
from .synthetic import make_synthetic_coco, register_synthetic_coco

register_demo_datasets()


def register_datasets_from_cfg(cfg):
    """Registers the datasets a config names in DATASETS.COCO_JSON_REGISTER and DATASETS.IMAGE_FOLDER_REGISTER
    (idempotent); returns their names. Every tool calls this after loading its config."""
    from .coco_json import register_coco_json

    return [register_coco_json(spec) for spec in cfg.DATASETS.COCO_JSON_REGISTER] + [
        register_image_folder_spec(spec) for spec in cfg.DATASETS.IMAGE_FOLDER_REGISTER
    ]

__all__ = [
    "demo_root",
    "list_images",
    "load_image_folder",
    "make_synthetic_coco",
    "register_datasets_from_cfg",
    "register_demo_datasets",
    "register_image_folder",
    "register_image_folder_spec",
    "register_synthetic_coco",
]
