"""The pretraining data loader: dataset dicts with proposals, a registered mapper, Detectron2's train loader.

Mappers live in ``MAPPER_REGISTRY`` and are built as ``Mapper(cfg, is_train=True)``. ``cfg.OBJPRETRAIN.MAPPER``
names one either by its registered class name (``"SoCoMapper"``) or by the short lower-case name that drops
the ``Mapper`` suffix (``"soco"`` for ``SoCoMapper``, ``"oac"`` for ``OACMapper``), which is what the configs use.
"""
import logging
import pickle

from detectron2.data import DatasetCatalog, build_batch_data_loader, get_detection_dataset_dicts
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.registry import Registry

from .samplers import PositionSeededDataset, ResumableTrainingSampler

__all__ = ["MAPPER_REGISTRY", "build_mapper", "build_pretrain_loader", "get_pretrain_dataset_dicts"]

logger = logging.getLogger(__name__)

MAPPER_REGISTRY = Registry("OBJPRETRAIN_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Registry for pretraining dataset mappers: callables ``Mapper(cfg, is_train=True)`` that turn one dataset dict
into one model input dict (see docs/design.md, "Mapper outputs"), or ``None`` to skip the image.
"""

_MAPPER_SUFFIX = "mapper"


def build_mapper(cfg, is_train=True):
    """The mapper named by ``cfg.OBJPRETRAIN.MAPPER`` (registered name, or short name without "Mapper")."""
    name = cfg.OBJPRETRAIN.MAPPER
    by_short_name = {
        registered.lower()[: -len(_MAPPER_SUFFIX)]: registered
        for registered, _ in MAPPER_REGISTRY
        if registered.lower().endswith(_MAPPER_SUFFIX)
    }
    registered = name if name in MAPPER_REGISTRY else by_short_name.get(name.lower())
    if registered is None:
        known = sorted(set(by_short_name) | {registered for registered, _ in MAPPER_REGISTRY})
        raise KeyError(f"cfg.OBJPRETRAIN.MAPPER={name!r} is not a registered mapper; known: {known}")
    return MAPPER_REGISTRY.get(registered)(cfg, is_train=is_train)


def get_pretrain_dataset_dicts(cfg):
    """The dicts of ``cfg.DATASETS.TRAIN``, with the proposals of ``cfg.DATASETS.PROPOSAL_FILES_TRAIN`` attached.

    Images without annotations are kept (pretraining is unsupervised). A proposal file that lacks an entry for
    one of its dataset's images raises a ``ValueError`` naming the file, the dataset and some missing ids,
    instead of Detectron2's bare ``KeyError``.
    """
    names = list(cfg.DATASETS.TRAIN)
    proposal_files = list(cfg.DATASETS.PROPOSAL_FILES_TRAIN) or None
    if proposal_files is not None and len(proposal_files) != len(names):
        raise ValueError(
            f"cfg.DATASETS.PROPOSAL_FILES_TRAIN has {len(proposal_files)} files for {len(names)} datasets "
            f"in cfg.DATASETS.TRAIN ({names}); give one proposal file per dataset, in the same order"
        )
    try:
        return get_detection_dataset_dicts(names, filter_empty=False, proposal_files=proposal_files)
    except KeyError as error:
        if proposal_files is None:
            raise
        _raise_for_unmatched_proposal_ids(names, proposal_files, error)
        raise


def _raise_for_unmatched_proposal_ids(names, proposal_files, error):
    for name, proposal_file in zip(names, proposal_files):
        dataset_ids = [str(d["image_id"]) for d in DatasetCatalog.get(name)]
        with PathManager.open(proposal_file, "rb") as f:
            proposal_ids = {str(i) for i in pickle.load(f, encoding="latin1").get("ids", [])}
        missing = [i for i in dataset_ids if i not in proposal_ids]
        if missing:
            raise ValueError(
                f"Proposal file {proposal_file} has no entry for {len(missing)} of the {len(dataset_ids)} images "
                f"of dataset {name!r} (e.g. image_id {missing[:3]}); its ids must be the dataset's image_id "
                f"strings (see docs/design.md). Regenerate it for this dataset or fix cfg.DATASETS."
            ) from error


def build_pretrain_loader(cfg):
    """An infinite, shuffled loader of ``cfg.SOLVER.IMS_PER_BATCH`` mapped images (split across DDP ranks).

    Each element is a list of this rank's mapper outputs. The stream is a function of ``cfg.SEED`` and the
    sample positions only (``objpretrain.data.samplers``): which image a position holds, its augmentations,
    and the replacement of an image the mapper skips do not depend on ``DATALOADER.NUM_WORKERS`` or on the
    process RNGs, so a run resumed at iteration i (``loader.resumable_sampler.set_start(i * IMS_PER_BATCH)``,
    done by ``PretrainTrainer.resume_or_load``) sees exactly the batches an uninterrupted run would. With
    ``cfg.SEED < 0`` a random seed is drawn (the same on every rank) and kept in the trainer's checkpoints.
    """
    dataset = get_pretrain_dataset_dicts(cfg)
    if not cfg.DATASETS.PROPOSAL_FILES_TRAIN:
        logger.warning(
            "cfg.DATASETS.PROPOSAL_FILES_TRAIN is empty: no image has proposals (the SoCo mapper then pads "
            "every image per INPUT.SOCO.FALLBACK=%r)", cfg.INPUT.SOCO.FALLBACK,
        )
    mapper = build_mapper(cfg, is_train=True)
    sampler = ResumableTrainingSampler(len(dataset), seed=cfg.SEED if cfg.SEED >= 0 else None)
    batch_size = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    # Workers take chunks of one batch in turn, so the batches come out in stream order for any worker count.
    stream = ToIterableDataset(PositionSeededDataset(dataset, mapper), sampler, shard_chunk_size=batch_size)
    loader = build_batch_data_loader(
        stream,
        None,
        cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # Page-locked batches copy to the GPU asynchronously (the model moves them with non_blocking=True).
        pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
    )
    loader.resumable_sampler = sampler
    return loader
