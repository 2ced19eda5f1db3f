"""PretrainTrainer: Detectron2's DefaultTrainer for self-supervised pretraining.

What it adds to DefaultTrainer: epochs converted to iterations from the dataset size and the linear lr
scaling rule (SoCo §4.1), LARS or SGD, the momentum-target hook for models that have a target network, a
guard against non-finite losses that names the batch's images, images/s in the metrics, atomic checkpoints
with fall-back to the newest readable one, a resume that continues the exact data stream
(``objpretrain.data.samplers``), and no evaluation. Models return a dict of losses in training
(docs/design.md); docs/reliability.md lists the fault cases.
"""
import logging
import math
import os
import time

import torch
import torch.distributed as dist
from detectron2.data import DatasetCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter, get_event_storage
from detectron2.utils.file_io import PathManager

from ..config_validation import NONFINITE_LOSS_POLICIES
from ..modeling.contract import PretrainingModel
from .defaults import ResumableTrainer
from .health import HealthMonitorHook
from .lars import LARS
from .momentum import MomentumTargetHook, unwrap_model

__all__ = [
    "PretrainAMPTrainer",
    "PretrainSimpleTrainer",
    "PretrainTrainer",
    "build_pretrain_optimizer",
    "resolve_schedule",
    "scaled_base_lr",
    "use_channels_last",
]

logger = logging.getLogger(__name__)

def scaled_base_lr(cfg):
    """``BASE_LR * IMS_PER_BATCH / LR_SCALE_BATCH_SIZE`` (SoCo §4.1, Goyal et al.; SOLVER.LR_SCALING "linear") or
    ``BASE_LR * sqrt(IMS_PER_BATCH / LR_SCALE_BATCH_SIZE)`` ("sqrt"), or BASE_LR when the scaling is off
    (LR_SCALE_BATCH_SIZE = 0)."""
    reference = cfg.SOLVER.LR_SCALE_BATCH_SIZE
    if reference == 0:
        return cfg.SOLVER.BASE_LR
    ratio = cfg.SOLVER.IMS_PER_BATCH / reference
    return cfg.SOLVER.BASE_LR * (ratio if cfg.SOLVER.LR_SCALING == "linear" else math.sqrt(ratio))


def resolve_schedule(cfg, num_images=None):
    """A copy of ``cfg`` with the iteration counts the schedule will use (``cfg`` itself is not changed):

    - with SOLVER.EPOCHS > 0, SOLVER.MAX_ITER / WARMUP_ITERS = ``ceil(epochs * num_images / IMS_PER_BATCH)``
      from SOLVER.EPOCHS / WARMUP_EPOCHS (SoCo §4.1: 100 or 400 epochs, 10 of warm-up); ``num_images``
      defaults to the size of DATASETS.TRAIN;
    - WARMUP_ITERS is capped below MAX_ITER (a short run of a config with a long warm-up would otherwise leave
      the cosine part an empty interval).

    Idempotent.
    """
    solver = cfg.SOLVER
    max_iter, warmup_iters = solver.MAX_ITER, solver.WARMUP_ITERS
    if solver.EPOCHS > 0:
        if num_images is None:
            num_images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
        if num_images <= 0:
            raise ValueError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no images; cannot convert epochs")
        max_iter = max(1, math.ceil(solver.EPOCHS * num_images / solver.IMS_PER_BATCH))
        warmup_iters = math.ceil(solver.WARMUP_EPOCHS * num_images / solver.IMS_PER_BATCH)
        logger.info(
            "%d images, batch %d: %s epochs = %d iterations, %s warm-up epochs = %d iterations",
            num_images, solver.IMS_PER_BATCH, solver.EPOCHS, max_iter, solver.WARMUP_EPOCHS, warmup_iters,
        )
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
    if warmup_iters >= max_iter:
        logger.warning(
            "SOLVER.WARMUP_ITERS=%d >= MAX_ITER=%d: warm-up capped at %d", warmup_iters, max_iter, max_iter - 1
        )
        warmup_iters = max_iter - 1
    if (max_iter, warmup_iters) == (solver.MAX_ITER, solver.WARMUP_ITERS):
        return cfg
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = max_iter, warmup_iters
    if was_frozen:
        cfg.freeze()
    return cfg


def _split_groups(param_groups, selected, changes):
    """Splits every group in two by ``selected(param)``: the unselected part as it was, the selected part with
    ``changes(group)`` (a dict of hyperparameters) applied; empty parts are dropped."""
    split = []
    for group in param_groups:
        for chosen in (False, True):
            params = [p for p in group["params"] if selected(p) == chosen]
            if params:
                split.append({**group, **(changes(group) if chosen else {}), "params": params})
    return split


def _split_bias_and_norm(param_groups):
    """Splits every group into weights (adapted by LARS) and biases / norm parameters (``lars_exclude``, no
    weight decay). In convolutional and MLP networks the latter are exactly the 1-D parameters."""
    split = _split_groups(param_groups, lambda p: p.ndim <= 1, lambda g: {"lars_exclude": True, "weight_decay": 0.0})
    return [{"lars_exclude": False, **group} for group in split]


def _scale_predictor_lr(model, param_groups, factor):
    """The groups with the model's predictor parameters (``PretrainingModel.parameter_groups()["predictor"]``:
    BYOL's and SoCo's q) at ``factor`` x their lr, in groups of their own; unchanged when factor is 1."""
    if factor == 1.0:
        return param_groups
    groups = model.parameter_groups() if isinstance(model, PretrainingModel) else {}
    predictor = {id(p) for p in groups.get("predictor", ())}
    if not predictor:
        raise ValueError(f"SOLVER.PREDICTOR_LR_FACTOR is {factor} but {type(model).__name__} has no predictor")
    return _split_groups(param_groups, lambda p: id(p) in predictor, lambda g: {"lr": g["lr"] * factor})


def build_pretrain_optimizer(cfg, model):
    """LARS (SoCo §4.1) or momentum SGD (SOLVER.OPTIMIZER, which ``validate_config`` checked) over the trainable
    parameters, at :func:`scaled_base_lr`.

    Biases and norm parameters get no weight decay (Detectron2's ``get_default_optimizer_params``), and LARS
    does not adapt them either (BYOL). Detectron2's SOLVER.CLIP_GRADIENTS applies to both.
    """
    lr = scaled_base_lr(cfg)
    params = get_default_optimizer_params(
        model, base_lr=lr, weight_decay=cfg.SOLVER.WEIGHT_DECAY, weight_decay_norm=0.0, weight_decay_bias=0.0
    )
    params = _scale_predictor_lr(model, params, cfg.SOLVER.PREDICTOR_LR_FACTOR)
    if cfg.SOLVER.OPTIMIZER.upper() == "LARS":
        return maybe_add_gradient_clipping(cfg, LARS)(
            _split_bias_and_norm(params),
            lr=lr,
            momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            trust_coefficient=cfg.SOLVER.LARS_TRUST_COEFFICIENT,
            eps=cfg.SOLVER.LARS_EPS,
        )
    return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
        params, lr=lr, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
    )


def use_channels_last(model, device, enabled=True):
    """``model`` with its weights in channels-last layout on a CUDA ``device`` when ``enabled`` (MODEL.CHANNELS_LAST);
    unchanged on a CPU, where it does not help (docs/performance.md)."""
    if enabled and str(device).startswith("cuda"):
        return model.to(memory_format=torch.channels_last)
    return model


class _GuardedStepMixin:
    """Shared by the plain and AMP step: a non-finite total loss raises with the batch's image ids, or (policy
    "skip") drops the whole step on every rank; images/s goes to the event storage."""

    def _init_guard(self, nonfinite_policy):
        if nonfinite_policy not in NONFINITE_LOSS_POLICIES:
            raise ValueError(
                f"OBJPRETRAIN.NONFINITE_LOSS_POLICY must be one of {NONFINITE_LOSS_POLICIES}, got {nonfinite_policy!r}"
            )
        self.nonfinite_policy = nonfinite_policy
        self.num_skipped_steps = 0

    def _next_batch(self):
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        return data, start, time.perf_counter() - start

    @staticmethod
    def _total_loss(loss_dict):
        if isinstance(loss_dict, torch.Tensor):
            return {"total_loss": loss_dict}, loss_dict
        return loss_dict, sum(loss_dict.values())

    def _losses_are_finite(self, loss_dict, losses, data):
        finite = torch.isfinite(losses.detach()).to(torch.int32)
        if comm.get_world_size() > 1:
            # Every rank must take the same decision, or DDP's gradient all-reduce would hang.
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite.item()):
            return True
        image_ids = [x.get("image_id", x.get("file_name")) if isinstance(x, dict) else None for x in data]
        values = {name: float(value.detach()) for name, value in loss_dict.items()}
        message = (
            f"Non-finite loss at iteration {self.iter} (on this or another rank): this rank's losses {values}, "
            f"its batch's image ids {image_ids}"
        )
        if self.nonfinite_policy == "raise":
            raise FloatingPointError(message + ". OBJPRETRAIN.NONFINITE_LOSS_POLICY='skip' drops such steps instead.")
        self.num_skipped_steps += 1
        logger.warning("%s; step skipped (%d so far)", message, self.num_skipped_steps)
        get_event_storage().put_scalar("skipped_nonfinite_steps", self.num_skipped_steps, smoothing_hint=False)
        return False

    def _put_throughput(self, data, start):
        images = len(data) * comm.get_world_size()
        get_event_storage().put_scalar("images_per_sec", images / max(time.perf_counter() - start, 1e-9))

    def state_dict(self):
        ret = super().state_dict()
        ret["num_skipped_steps"] = self.num_skipped_steps
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.num_skipped_steps = state_dict.get("num_skipped_steps", 0)


class PretrainSimpleTrainer(_GuardedStepMixin, SimpleTrainer):
    """Detectron2's SimpleTrainer step with the non-finite loss guard checked before backward."""

    def __init__(self, model, data_loader, optimizer, nonfinite_policy="raise"):
        super().__init__(model, data_loader, optimizer)
        self._init_guard(nonfinite_policy)

    def run_step(self):
        assert self.model.training, "[PretrainSimpleTrainer] model was changed to eval mode!"
        data, start, data_time = self._next_batch()
        loss_dict, losses = self._total_loss(self.model(data))
        self.optimizer.zero_grad()
        if not self._losses_are_finite(loss_dict, losses, data):
            return
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
        self._put_throughput(data, start)


class PretrainAMPTrainer(_GuardedStepMixin, AMPTrainer):
    """Detectron2's AMPTrainer step (autocast + GradScaler) with the non-finite loss guard."""

    def __init__(self, model, data_loader, optimizer, nonfinite_policy="raise"):
        super().__init__(model, data_loader, optimizer)
        self._init_guard(nonfinite_policy)

    def run_step(self):
        assert self.model.training, "[PretrainAMPTrainer] model was changed to eval mode!"
        assert torch.cuda.is_available(), "[PretrainAMPTrainer] SOLVER.AMP.ENABLED needs CUDA"
        data, start, data_time = self._next_batch()
        with torch.autocast("cuda", dtype=self.precision):
            loss_dict, losses = self._total_loss(self.model(data))
        self.optimizer.zero_grad()
        if not self._losses_are_finite(loss_dict, losses, data):
            return
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self._put_throughput(data, start)


class PretrainTrainer(ResumableTrainer):
    """``ResumableTrainer`` (``objpretrain.engine.defaults``) for pretraining: see the module docstring. Its builders
    give the pretraining loader, the schedule in epochs, LARS or SGD, the guarded step, and the hooks of a
    pretraining model (momentum target, health). ``test`` returns {} (no evaluation)."""

    pretraining = True

    @classmethod
    def schedule_config(cls, cfg, data_loader):
        # Epochs count the loader's items: images, or boxes with INPUT.OAC.ITEM_PER_BOX.
        return resolve_schedule(cfg, num_images=getattr(data_loader, "num_items", None))

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        step_trainer = PretrainAMPTrainer if cfg.SOLVER.AMP.ENABLED else PretrainSimpleTrainer
        return step_trainer(model, data_loader, optimizer, cfg.OBJPRETRAIN.NONFINITE_LOSS_POLICY)

    @classmethod
    def build_model(cls, cfg):
        return use_channels_last(super().build_model(cfg), cfg.MODEL.DEVICE, cfg.MODEL.CHANNELS_LAST)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_pretrain_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        from objpretrain.data.build import build_pretrain_loader

        return build_pretrain_loader(cfg)

    def build_hooks(self):
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if unwrap_model(self.model).momentum_pairs():
            # Before the checkpointer, so a checkpoint includes its iteration's target update.
            ret.append(MomentumTargetHook(self.max_iter))
        if self.cfg.OBJPRETRAIN.HEALTH.ENABLED:
            # On every rank (a stop on collapse is agreed by all), before the writer so its scalars go out with
            # the same iteration's metrics.
            ret.append(HealthMonitorHook(self.cfg))
        if comm.is_main_process():
            # The writer before the checkpointer: an iteration whose checkpoint exists has its metrics written,
            # so a run killed between the two and resumed from that checkpoint leaves no gap in metrics.json.
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=self.cfg.OBJPRETRAIN.LOG_PERIOD))
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return ret

    def build_writers(self):
        """Detectron2's console, JSON and TensorBoard writers, each value the median over one log period
        (OBJPRETRAIN.LOG_PERIOD) rather than over a fixed 20 iterations."""
        period = self.cfg.OBJPRETRAIN.LOG_PERIOD
        PathManager.mkdirs(self.cfg.OUTPUT_DIR)
        return [
            CommonMetricPrinter(self.max_iter, window_size=period),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), window_size=period),
            TensorboardXWriter(self.cfg.OUTPUT_DIR, window_size=period),
        ]

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Pretraining has no evaluation of its own: the pretrained weights are judged by finetuning."""
        return {}
