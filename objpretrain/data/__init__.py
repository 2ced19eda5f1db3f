from . import datasets  # noqa: F401  (registers the demo datasets)
from . import build, soco_mapper  # noqa: F401
from . import oac_mapper  # noqa: F401
from .datasets import coco_json  # noqa: F401  (Mini COCO, user COCO-json sets)
from .datasets import ohms  # noqa: F401  (registers ohms_train / ohms_val)
