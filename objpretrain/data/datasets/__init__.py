"""Dataset registration. Importing this module registers the demo datasets (lazily: nothing is read until used)."""
from .demo import demo_root, register_demo_datasets
from .image_folder import list_images, load_image_folder, register_image_folder
from .synthetic import make_synthetic_coco, register_synthetic_coco

register_demo_datasets()

__all__ = [
    "demo_root",
    "list_images",
    "load_image_folder",
    "make_synthetic_coco",
    "register_demo_datasets",
    "register_image_folder",
    "register_synthetic_coco",
]
