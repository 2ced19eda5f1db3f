"""Checks, before any process is launched, that a config can run on this machine: each problem becomes one line that
names the file, key or dataset and the command or override that fixes it (tools print it and exit with status 2,
:func:`exit_on_config_error`), instead of a traceback from deep inside Detectron2 minutes later.

Checked: every value of the config (``objpretrain.config_validation.validate_config``: choices, ranges, the rules
across keys); MODEL.DEVICE against the visible GPUs; that every dataset of DATASETS.TRAIN / TEST (and the health
monitors' retrieval set) is registered and, for the demo sets, that ``datasets/prepare_demo.py`` has built them; that
every proposal file exists.
"""
import os
import sys

import torch
from detectron2.data import DatasetCatalog

from ..config import ConfigError, ConfigFileError
from ..config_validation import validate_config
from ..data.datasets.demo import demo_root

__all__ = ["ConfigError", "check_runnable", "exit_on_config_error"]

DEMO_DATASETS = ("demo_unlabeled", "demo_trees_train", "demo_trees_val")


def check_runnable(cfg, proposal_files=True, num_processes=1, pretraining=False):
    """Raises :class:`ConfigError` for the first problem found (module docstring); returns None when there is
    none. ``proposal_files``: also check DATASETS.PROPOSAL_FILES_TRAIN (pretraining reads them; a fine-tuning
    config that does not load proposals ignores them). ``num_processes``: processes of the launch, all machines.
    ``pretraining``: the config is for tools/pretrain_net.py (its model must be a pretraining model)."""
    validate_config(cfg, num_processes=num_processes, pretraining=pretraining)
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE is {device!r} but no CUDA GPU is visible on this machine; add the override "
                          "`MODEL.DEVICE cpu` (and SOLVER.AMP.ENABLED False)")
    registered = set(DatasetCatalog.list())
    retrieval = cfg.OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET
    names = {"DATASETS.TRAIN": cfg.DATASETS.TRAIN, "DATASETS.TEST": cfg.DATASETS.TEST,
             "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET": [retrieval] if retrieval else []}
    for key, datasets in names.items():
        for name in datasets:
            if name not in registered:
                raise ConfigError(
                    f"{key} names {name!r}, which is not a registered dataset; register it with the override "
                    f"DATASETS.IMAGE_FOLDER_REGISTER \"('{name}:/path/to/images',)\" or DATASETS.COCO_JSON_REGISTER "
                    f"\"('{name}:/path/to/annotations.json:/path/to/images',)\""
                )
            if name in DEMO_DATASETS and not os.path.isdir(os.path.join(demo_root(), "unlabeled")):
                raise ConfigError(f"{key} names the demo dataset {name!r}, but the demo data is not built under "
                                  f"{demo_root()}; run `python datasets/prepare_demo.py` (or `make demo`)")
    if proposal_files:
        for dataset, path in zip(cfg.DATASETS.TRAIN, cfg.DATASETS.PROPOSAL_FILES_TRAIN):
            if not os.path.isfile(path):
                raise ConfigError(
                    f"DATASETS.PROPOSAL_FILES_TRAIN: {path} does not exist; make it with `python "
                    f"tools/generate_proposals.py --images {dataset} --output {path}` (docs/proposals.md), or "
                    "override DATASETS.PROPOSAL_FILES_TRAIN with the file you have"
                )


def exit_on_config_error(tool, check):
    """Runs ``check()`` (registering the config's datasets and :func:`check_runnable`); on a config problem prints
    ``<tool>: error: <one line>`` to stderr and exits with status 2, as argparse does for a bad argument."""
    try:
        return check()
    except (ConfigError, ConfigFileError, FileNotFoundError) as error:
        print(f"{tool}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
