"""Training data loaders whose stream resumes exactly: pretraining (dataset dicts with proposals, a registered
mapper) and fine-tuning (Detectron2's DatasetMapper and aspect-ratio grouping).

Pretraining mappers live in ``MAPPER_REGISTRY`` and derive from :class:`PretrainMapper`. The pretraining model names
the one it takes (``PretrainingModel.dataset_mapper``, resolved by ``objpretrain.modeling.contract.
dataset_mapper_name``); the loader builds it as ``Mapper(cfg, is_train=True, dataset_dicts=...)`` with the dicts it
loaded itself.

Proposal files (pretraining's DATASETS.PROPOSAL_FILES_TRAIN; fine-tuning's with MODEL.LOAD_PROPOSALS) are read by
``objpretrain.data.proposals.load_proposal_file`` (the restricted unpickler, every entry checked) and attached by
:func:`attach_proposals`. Detectron2's ``load_proposals_into_dataset``, which reads them with ``pickle.load``, is
never called by these loaders, and it is not replaced: the project's loaders call the safe one explicitly.
"""
import logging

from detectron2.data import DatasetMapper, build_batch_data_loader, get_detection_dataset_dicts
from detectron2.data.common import ToIterableDataset
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from ..modeling.contract import dataset_mapper_name
from .samplers import AspectRatioGroupedSampler, PositionSeededDataset, ResumableTrainingSampler

__all__ = [
    "MAPPER_REGISTRY",
    "MissingProposalsError",
    "PretrainMapper",
    "attach_proposals",
    "build_mapper",
    "build_pretrain_loader",
    "build_resumable_detection_train_loader",
    "build_resumable_loader",
    "get_detection_dataset_dicts_with_proposals",
    "get_pretrain_dataset_dicts",
    "load_proposals_into_dataset",
]

logger = logging.getLogger(__name__)

MAPPER_REGISTRY = Registry("OBJPRETRAIN_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Registry for pretraining dataset mappers: :class:`PretrainMapper` subclasses, built as
``Mapper(cfg, is_train=True, dataset_dicts=None)``, that turn one dataset dict into one model input dict (see
docs/design.md, "Mapper outputs"), or ``None`` to skip the image.
"""


class PretrainMapper:
    """What the pretraining loader asks of a mapper, besides ``__call__(dataset_dict)``: the items of an epoch.

    ``__init__(cfg, is_train=True, dataset_dicts=None)``: ``dataset_dicts`` are the loader's dataset dicts (with
    proposals), for a mapper that derives settings from the dataset (the OAC mapper's s_min); None when it is built
    on its own.
    """

    def dataset_items(self, dataset_dicts):
        """The items of an epoch, which ``__call__`` maps and SOLVER.EPOCHS counts: the dataset dicts themselves,
        unless a mapper splits them (the OAC mapper with INPUT.OAC.ITEM_PER_BOX: one item per box)."""
        return dataset_dicts


def build_mapper(cfg, is_train=True, dataset_dicts=None):
    """The mapper of ``cfg``'s pretraining model (:func:`~objpretrain.modeling.contract.dataset_mapper_name`)."""
    return MAPPER_REGISTRY.get(dataset_mapper_name(cfg))(cfg, is_train=is_train, dataset_dicts=dataset_dicts)


def get_pretrain_dataset_dicts(cfg):
    """The dicts of ``cfg.DATASETS.TRAIN``, with the proposals of ``cfg.DATASETS.PROPOSAL_FILES_TRAIN`` attached.

    Images without annotations are kept (pretraining is unsupervised). A proposal file that lacks an entry for
    one of its dataset's images raises a ``MissingProposalsError`` (a ``ValueError``) naming the file, the dataset
    and some missing ids, instead of Detectron2's bare ``KeyError``.
    """
    names = list(cfg.DATASETS.TRAIN)
    proposal_files = list(cfg.DATASETS.PROPOSAL_FILES_TRAIN) or None
    if proposal_files is not None and len(proposal_files) != len(names):
        raise ValueError(
            f"cfg.DATASETS.PROPOSAL_FILES_TRAIN has {len(proposal_files)} files for {len(names)} datasets "
            f"in cfg.DATASETS.TRAIN ({names}); give one proposal file per dataset, in the same order"
        )
    if proposal_files is None:
        return get_detection_dataset_dicts(names, filter_empty=False)
    from .proposals import load_proposal_file, recipe_mismatch  # the proposal package loads OpenCV and skimage

    dataset_dicts = []
    for name, path in zip(names, proposal_files):
        # The file is read once, here, for both the recipe check and the proposals of the dataset's images.
        proposals = load_proposal_file(path)
        preset = cfg.OBJPRETRAIN.PROPOSAL_PRESET
        mismatch = recipe_mismatch(path, preset, proposals) if preset and comm.is_main_process() else None
        if mismatch:
            logger.warning("%s. OBJPRETRAIN.PROPOSAL_PRESET says this config's recipe expects that preset: "
                           "`tools/generate_proposals.py --method %s` makes it (docs/proposals.md).", mismatch, preset)
        dicts = get_detection_dataset_dicts([name], filter_empty=False)
        dataset_dicts.extend(attach_proposals(dicts, proposals, path, dataset=name))
    return dataset_dicts


class MissingProposalsError(ValueError):
    """Images of a dataset that its proposal file has no entry for; the message names the file and some ids."""

    def __init__(self, path, missing, total, dataset=None):
        self.path, self.missing, self.total = path, missing, total
        of_dataset = f" of dataset {dataset!r}" if dataset else ""
        super().__init__(
            f"Proposal file {path} has no entry for {len(missing)} of the {total} images{of_dataset} (e.g. image_id "
            f"{missing[:3]}); its ids must be the dataset's image_id strings (see docs/design.md). Regenerate it "
            f"for this dataset or fix cfg.DATASETS."
        )


def load_proposals_into_dataset(dataset_dicts, proposal_file, dataset=None):
    """Detectron2's ``load_proposals_into_dataset`` (same fields, same box order), with the file read by
    ``objpretrain.data.proposals.load_proposal_file``: no code runs from it and its entries are checked. See
    :func:`attach_proposals`; ``dataset``: the name the dicts are registered under, for the error message."""
    from .proposals.files import load_proposal_file  # the proposal package imports the backends (OpenCV, skimage)

    return attach_proposals(dataset_dicts, load_proposal_file(proposal_file), proposal_file, dataset)


def attach_proposals(dataset_dicts, proposals, proposal_file, dataset=None):
    """Attaches the proposals of a file already read by ``load_proposal_file`` (``proposal_file``: its path, for the
    messages) to ``dataset_dicts``, in place, and returns them. Each dict gets ``proposal_boxes`` (XYXY_ABS) and
    ``proposal_objectness_logits``, best first, and ``proposal_bbox_mode``. An image the file lacks raises
    MissingProposalsError; file entries that match no image are ignored, and counted in the log."""
    index = {image_id: k for k, image_id in enumerate(proposals["ids"])}
    dataset_ids = [str(d["image_id"]) for d in dataset_dicts]
    missing = [i for i in dataset_ids if i not in index]
    if missing:
        raise MissingProposalsError(proposal_file, missing, len(dataset_ids), dataset)
    for record, image_id in zip(dataset_dicts, dataset_ids):
        boxes, logits = proposals["boxes"][index[image_id]], proposals["objectness_logits"][index[image_id]]
        order = logits.argsort()[::-1]  # Detectron2's order, ties included, so that data streams stay as they were
        record["proposal_boxes"] = boxes[order]
        record["proposal_objectness_logits"] = logits[order]
        record["proposal_bbox_mode"] = BoxMode.XYXY_ABS
    unmatched = len(index.keys() - set(dataset_ids))
    logger.info("Proposals of %d images%s from %s%s", len(dataset_ids), f" of {dataset}" if dataset else "",
                proposal_file,
                f"; {unmatched} of its entries match no image of the dataset and are ignored" if unmatched else "")
    return dataset_dicts


def get_detection_dataset_dicts_with_proposals(names, filter_empty=True, min_keypoints=0, proposal_files=None):
    """Detectron2's ``get_detection_dataset_dicts(names, filter_empty, min_keypoints, proposal_files)``, with each
    proposal file read by :func:`load_proposals_into_dataset` (no code runs from it, its entries are checked)
    instead of Detectron2's, which reads it with ``pickle.load``. What the fine-tuning loaders use for
    MODEL.LOAD_PROPOSALS (``build_resumable_detection_train_loader``, ``FinetuneTrainer.build_test_loader``);
    objpretrain replaces no Detectron2 function, so Detectron2's own loaders still read proposal files its way.

    Each dataset's dicts are filtered (``filter_empty``, ``min_keypoints``) before its file's proposals are
    attached, so the file needs entries for the images kept only.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not proposal_files:
        return get_detection_dataset_dicts(names, filter_empty=filter_empty, min_keypoints=min_keypoints)
    if len(proposal_files) != len(names):
        raise ValueError(f"{len(proposal_files)} proposal files for {len(names)} datasets ({names}); give one "
                         "proposal file per dataset, in the same order")
    dataset_dicts = []
    for name, path in zip(names, proposal_files):
        dicts = get_detection_dataset_dicts([name], filter_empty=filter_empty, min_keypoints=min_keypoints,
                                            proposal_files=None)
        dataset_dicts.extend(load_proposals_into_dataset(dicts, path, dataset=name))
    if len(names) > 1 and "annotations" in dataset_dicts[0]:
        try:  # what Detectron2 checks across the datasets it concatenates
            check_metadata_consistency("thing_classes", names)
        except AttributeError:  # class names are not available for these datasets
            pass
    return dataset_dicts


def build_pretrain_loader(cfg):
    """An infinite, shuffled loader of ``cfg.SOLVER.IMS_PER_BATCH`` mapped images (split across DDP ranks).

    Each element is a list of this rank's mapper outputs. The stream is a function of ``cfg.SEED`` and the
    sample positions only (``objpretrain.data.samplers``): which image a position holds, its augmentations,
    and the replacement of an image the mapper skips do not depend on ``DATALOADER.NUM_WORKERS`` or on the
    process RNGs, so a run resumed at iteration i (``loader.resumable_sampler.set_start(i * IMS_PER_BATCH)``,
    done by ``ResumableDataStreamMixin.resume_or_load``) sees exactly the batches an uninterrupted run would.
    With ``cfg.SEED < 0`` a random seed is drawn (the same on every rank) and kept in the trainer's checkpoints.
    """
    dataset = get_pretrain_dataset_dicts(cfg)
    mapper = build_mapper(cfg, is_train=True, dataset_dicts=dataset)
    return build_resumable_loader(cfg, mapper.dataset_items(dataset), mapper, aspect_ratio_grouping=False)


def build_resumable_detection_train_loader(cfg, mapper=None):
    """Detectron2's ``build_detection_train_loader(cfg)`` for fine-tuning (same dataset dicts, DatasetMapper,
    shuffling and aspect-ratio grouping), made exactly resumable as the pretraining loader is: a run resumed
    with ``--resume`` continues the data stream where the checkpoint left it, instead of restarting it."""
    if cfg.DATALOADER.SAMPLER_TRAIN not in ("TrainingSampler", "RepeatFactorTrainingSampler"):
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r}: the resumable fine-tuning loader "
            "implements Detectron2's TrainingSampler and RepeatFactorTrainingSampler (LVIS)"
        )
    dataset = get_detection_dataset_dicts_with_proposals(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    mapper = mapper if mapper is not None else DatasetMapper(cfg, True)
    repeat_factors = None
    if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT)
    return build_resumable_loader(cfg, dataset, mapper, aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
                                  repeat_factors=repeat_factors)


def build_resumable_loader(cfg, dataset, mapper, aspect_ratio_grouping, repeat_factors=None):
    """The loader of both functions above: ``mapper`` over a position-seeded stream of ``dataset`` (each image
    repeated per ``repeat_factors`` when given), batched by ``cfg.SOLVER.IMS_PER_BATCH``;
    ``loader.resumable_sampler`` is the sampler a resume moves."""
    sampler = ResumableTrainingSampler(len(dataset), seed=cfg.SEED if cfg.SEED >= 0 else None,
                                       repeat_factors=repeat_factors)
    batch_size = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    if aspect_ratio_grouping:
        unsized = [d.get("file_name") for d in dataset if "width" not in d or "height" not in d]
        if unsized:
            raise ValueError(f"DATALOADER.ASPECT_RATIO_GROUPING needs every dataset dict's width and height; "
                             f"{unsized[0]} has none (set them, or the option False)")
        sampler = AspectRatioGroupedSampler(sampler, [d["width"] > d["height"] for d in dataset], batch_size)
    # Workers take chunks of one batch in turn, so the batches come out in stream order for any worker count.
    stream = ToIterableDataset(PositionSeededDataset(dataset, mapper), sampler, shard_chunk_size=batch_size)
    loader = build_batch_data_loader(
        stream,
        None,
        cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,  # grouped above, in the sampler, when asked for
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # Page-locked batches copy to the GPU asynchronously (the model moves them with non_blocking=True).
        pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
    )
    loader.resumable_sampler = sampler
    loader.num_items = len(dataset)  # what SOLVER.EPOCHS counts
    return loader
