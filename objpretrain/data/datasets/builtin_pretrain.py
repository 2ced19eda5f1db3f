"""Pretraining datasets the paper configs name, registered lazily under ``$DETECTRON2_DATASETS``.

- ``imagenet_train_unlabeled``: every image under ``imagenet/train`` (ImageNet's class tree; labels unused),
  with image ids ``<wnid>/<file stem>`` matching the proposal file ``datasets/imagenet/proposals_train.pkl``.
"""
import os

from .image_folder import register_image_folder

_PRETRAIN_IMAGE_FOLDERS = {
    "imagenet_train_unlabeled": "imagenet/train",
}


def register_pretrain_datasets(root=None):
    root = root or os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    for name, folder in _PRETRAIN_IMAGE_FOLDERS.items():
        register_image_folder(name, os.path.join(root, folder))


register_pretrain_datasets()
