"""Fine-tuning and evaluating a Detectron2 detector from a converted pretraining checkpoint (tools/train_net.py,
docs/transfer.md).

``FinetuneTrainer`` is Detectron2's DefaultTrainer, as MoCo's detection/train_net.py uses it, built the way
``PretrainTrainer`` is (``objpretrain.engine.defaults.ResumableTrainer``): crash-safe checkpoints, DDP on the model's
device, a resume that continues the exact data stream (the loader of
``objpretrain.data.build.build_resumable_detection_train_loader``), and the evaluator the test set's
``evaluator_type`` names (``objpretrain.evaluation.detection``). PreciseBN runs where the config enables
TEST.PRECISE_BN. With MODEL.LOAD_PROPOSALS, both loaders read the proposal files with the project's safe loader
(``objpretrain.data.build.get_detection_dataset_dicts_with_proposals``: no code runs from a file), not with
Detectron2's ``pickle.load``.
"""
import logging

from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.evaluation import verify_results

from ..data.build import build_resumable_detection_train_loader, get_detection_dataset_dicts_with_proposals
from ..evaluation.detection import build_detection_evaluator
from .checkpoint import AtomicDetectionCheckpointer
from .defaults import ResumableTrainer

__all__ = ["FinetuneTrainer", "finetune"]

logger = logging.getLogger(__name__)


class FinetuneTrainer(ResumableTrainer):
    """See the module docstring."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_resumable_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader of ``dataset_name`` (DatasetMapper, one image per batch, InferenceSampler), with
        DATASETS.PROPOSAL_FILES_TEST read by the safe loader when MODEL.LOAD_PROPOSALS."""
        proposal_files = None
        if cfg.MODEL.LOAD_PROPOSALS:
            proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(dataset_name)]]
        dataset = get_detection_dataset_dicts_with_proposals([dataset_name], filter_empty=False,
                                                             proposal_files=proposal_files)
        return build_detection_test_loader(dataset, mapper=DatasetMapper(cfg, False),
                                           num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_detection_evaluator(cfg, dataset_name, output_folder)


def finetune(cfg, resume=False, eval_only=False):
    """Fine-tunes ``cfg``'s detector from MODEL.WEIGHTS (or, with ``resume``, continues from OUTPUT_DIR's last
    checkpoint) and returns the final evaluation's results ({} without TEST sets); with ``eval_only`` only evaluates
    those weights. What tools/train_net.py runs in every process."""
    if eval_only:
        model = FinetuneTrainer.build_model(cfg)
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        results = FinetuneTrainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: the detector trains from scratch (the 'Scratch' rows of the papers' "
                       "tables). Pass the converted checkpoint as MODEL.WEIGHTS path/to/model.pkl.")
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    # Kept by DefaultTrainer's evaluation hook for verify_results.
    return getattr(trainer, "_last_eval_results", {})
