"""The detection evaluator of a fine-tuning test set (tools/train_net.py): Detectron2's, picked by the set's
``evaluator_type`` in the MetadataCatalog: "coco" (COCOEvaluator; bbox, and segm with MODEL.MASK_ON),
"pascal_voc" (PascalVOCDetectionEvaluator) or "lvis" (LVISEvaluator, at most TEST.DETECTIONS_PER_IMAGE per image,
300 in the LVIS configs as the LVIS protocol allows).

The ``lvis`` package (0.5.3, the last release) still writes ``np.float``, which NumPy removed in 1.24; its
evaluation module gets a NumPy whose ``float`` is the builtin (``_numpy_with_float``), and nothing else changes.
"""
import os
import types

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, LVISEvaluator, PascalVOCDetectionEvaluator

__all__ = ["build_detection_evaluator"]

EVALUATOR_TYPES = ("coco", "pascal_voc", "lvis")


def build_detection_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator of ``dataset_name``'s ``evaluator_type``; a ValueError names the dataset for any other."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "lvis":
        _give_lvis_a_numpy_float()
        return LVISEvaluator(dataset_name, tasks=tasks, output_dir=output_folder,
                             max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
    raise ValueError(
        f"Dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; train_net evaluates {EVALUATOR_TYPES} sets "
        "(register other COCO-format sets with --register-coco name:json:image_root)"
    )


class _NumpyWithFloat(types.ModuleType):
    """NumPy with the ``float`` alias that ``lvis.eval`` uses; every other attribute is NumPy's own."""

    float = float

    def __getattr__(self, name):
        return getattr(np, name)


def _give_lvis_a_numpy_float():
    import lvis.eval

    if not hasattr(np, "float") and not isinstance(lvis.eval.np, _NumpyWithFloat):
        lvis.eval.np = _NumpyWithFloat("numpy")
