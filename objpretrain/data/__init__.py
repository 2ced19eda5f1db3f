# Importing the modules registers the demo, Mini COCO, user COCO-json and OHMS datasets and the mappers.
from . import build, datasets, oac_mapper, soco_mapper  # noqa: F401
from .datasets import coco_json, ohms  # noqa: F401
