"""What both trainers (``PretrainTrainer``, ``FinetuneTrainer``) and both tools (tools/pretrain_net.py,
tools/train_net.py) share, as Detectron2's ``detectron2.engine.defaults`` does for its own: the trainer whose every
part comes from an overridable builder, the config of a command line, the setup of a process, and the launch after
preflight.
"""
import logging
import os
import weakref

import torch.distributed as dist
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine import default_setup as d2_default_setup
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_objpretrain_config, merge_config_file
from ..config_validation import validate_config
from ..data.datasets import register_datasets_from_cfg
from .checkpoint import AtomicDetectionCheckpointer
from .distributed import create_ddp_model
from .preflight import exit_on_config_error
from .resumable import ResumableDataStreamMixin

__all__ = ["ResumableTrainer", "build_config", "default_setup", "launch", "launch_after_preflight"]


class ResumableTrainer(ResumableDataStreamMixin, DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with every part built by a method a subclass overrides: ``build_train_loader``,
    ``schedule_config``, ``build_model``, ``build_optimizer``, ``build_ddp_model``, ``build_step_trainer``,
    ``build_lr_scheduler``, ``build_checkpointer``, ``build_hooks``. By default: atomic checkpoints that fall back to
    the newest readable one on resume (``AtomicDetectionCheckpointer``), DDP on the model's device, so that
    ``--num-gpus N`` also runs on a CPU machine (``objpretrain.engine.distributed``), and a resume that continues the
    exact data stream and step RNGs (``ResumableDataStreamMixin``, docs/reliability.md).

    ``pretraining``: the config is for a pretraining model (``validate_config``'s rule).
    """

    pretraining = False

    def __init__(self, cfg):
        # Detectron2's DefaultTrainer.__init__ (0.7.2) builds the DDP wrapper with a module function and the
        # checkpointer inline, which no subclass can replace. This is that body with each of its parts from a
        # builder: the one place objpretrain replaces the body of a Detectron2 method, so compare it with
        # DefaultTrainer.__init__ when upgrading Detectron2. One difference of order: the loader comes first, since
        # pretraining counts SOLVER.EPOCHS in the loader's items (schedule_config) before the scheduler is built.
        # Preflight validated the config before launch; a trainer built from Python validates it here.
        validate_config(cfg, num_processes=comm.get_world_size(), pretraining=self.pretraining)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        data_loader = self.build_train_loader(cfg)
        cfg = self.schedule_config(cfg, data_loader)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        model = self.build_ddp_model(cfg, model)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def schedule_config(cls, cfg, data_loader):
        """The config whose SOLVER iteration counts the run uses, given its loader: ``cfg`` itself here."""
        return cfg

    @classmethod
    def build_ddp_model(cls, cfg, model):
        """``model`` in DistributedDataParallel when there are several processes, on the model's device."""
        return create_ddp_model(model, broadcast_buffers=False)

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        """The object that runs one training step: Detectron2's ``AMPTrainer`` or ``SimpleTrainer``."""
        return (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)

    def build_checkpointer(self, cfg, model):
        """The checkpointer of model and trainer state in OUTPUT_DIR: ``AtomicDetectionCheckpointer``."""
        return AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))


def build_config(config_file, opts, register_coco=()):
    """The frozen config of a command line (Detectron2's defaults, objpretrain's keys, the file, the KEY VALUE
    ``opts``), with its datasets registered. ``register_coco``: "name:json:image_root" entries added to
    DATASETS.COCO_JSON_REGISTER, so that the run's saved config.yaml registers them again. The file (and each
    ``_BASE_`` it names) is read with YAML's safe loader (``objpretrain.config.merge_config_file``): a problem is a
    one-line ``ConfigFileError`` naming the file, which preflight prints."""
    cfg = get_cfg()
    add_objpretrain_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts))
    cfg.DATASETS.COCO_JSON_REGISTER = list(cfg.DATASETS.COCO_JSON_REGISTER) + list(register_coco)
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    return cfg


def default_setup(cfg, args):
    """Detectron2's ``default_setup`` (output folder, config.yaml, its loggers, seeds), then objpretrain's logger
    (skips, resume, fall-backs) in the same files, and this process's id (which process to look at when one hangs)."""
    d2_default_setup(cfg, args)
    logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="objpretrain", abbrev_name="op")
    logger.info("Rank %d: process id %d", comm.get_rank(), os.getpid())


def launch_after_preflight(tool, preflight, main, args):
    """What a tool's ``__main__`` does: ``preflight(args)`` in this process, where a config problem ends the command
    with one line (:func:`~objpretrain.engine.preflight.exit_on_config_error`), then Detectron2's ``launch`` of
    ``main(args)`` on ``args.num_gpus`` processes per machine."""
    print("Command Line Args:", args)
    exit_on_config_error(tool, lambda: preflight(args))
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))


def launch(main, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """Detectron2's ``launch``, where each worker of a multi-process run leaves the process group once ``main``
    returns. A worker that exits with the group alive can abort at interpreter shutdown (gloo's threads still hold
    tensors: ``terminate called without an active exception``, SIGABRT, pytorch/pytorch#190489), which failed a
    CI run of the 2-process shuffle-BN test after its work was done."""
    if num_gpus_per_machine * num_machines == 1:
        return d2_launch(main, 1, args=args)  # no process group: main runs in this process
    return d2_launch(_run_then_leave_process_group, num_gpus_per_machine, num_machines=num_machines,
                     machine_rank=machine_rank, dist_url=dist_url, args=(main, *args))


def _run_then_leave_process_group(main, *args):
    """``main(*args)``, then a barrier (no rank tears down what another still uses) and ``destroy_process_group``.
    A ``main`` that raises skips both: the exception ends the worker and ``launch`` reports it."""
    result = main(*args)
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    return result
