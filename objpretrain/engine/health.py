"""Health monitors of self-supervised pretraining, as a Detectron2 hook (docs/pretraining.md, "Health monitors").

A falling SSL loss is not learning: BYOL's loss falls to the value of a predictor that outputs the mean target,
InfoNCE sits at ln(K + 1) when every embedding is equal, and a backbone that does not move gives a random
network whatever the loss does. Every ``OBJPRETRAIN.HEALTH.PERIOD`` iterations the hook writes, to the event
storage (so metrics.json and TensorBoard), for the model's last step (``model.health_record()``,
``objpretrain.modeling.health.HealthRecord``):

- ``health/<embedding>_spread`` and ``health/<embedding>_cosine_to_mean`` for every embedding the model
  reports (projector, predictor, target projector): about 1 and low when spread, 0 and 1 when collapsed;
  ``health/<embedding>_norm``, the mean L2 norm of its rows as the model reports them (BYOL and SoCo: before
  normalization, where a cosine loss leaves it free and a growing norm shrinks every later gradient by 1 / norm;
  MoCo reports its normalized queries, so 1);
- ``health/<loss>_collapse_value`` beside the loss itself, and ``health/<loss>_over_collapse`` (their ratio);
- ``health/move_<group>_since_start`` and ``health/move_<group>_last_period``: the relative change
  ``||W - W_ref|| / ||W_ref||`` of the weights (conv and linear, not norms) of each group of the online network
  (stem, res2 ... res5, fpn, box_head, ...), since iteration 0 and over the last period;
- ``health/online_target_distance``: ``||theta_online - theta_target|| / ||theta_target||`` over the backbone;
- every ``RETRIEVAL_PERIOD`` iterations, ``health/view_retrieval`` (objpretrain.evaluation.view_retrieval) on a
  fixed set of images, beside ``health/view_retrieval_initial``, the initial weights' score measured at
  iteration 0; and, from the same features, ``health/feature_rank`` beside ``health/feature_rank_initial``: the
  effective rank (RankMe) of the image features of both views, which falls under dimensional collapse, where the
  features keep their spread but fill few directions (docs/results.md, "Detection transfer": the demo's SoCo run
  ends at 34 against 171 for its initial weights, and its FPN levels P2-P4 at 4-5 against 40-48 at random init).

A warning names the monitor and the iteration when an embedding stays collapsed (cosine to the mean at least
``COLLAPSE_COSINE``) or a backbone stage stays still (moved less than ``MIN_MOVEMENT`` in a period) for
``PATIENCE`` periods in a row; with ``STOP_ON_COLLAPSE`` the run stops there with :class:`TrainingCollapsedError`.
At the end, ``health_summary.json`` in OUTPUT_DIR holds the final values.

The initial weights (the reference of "since start") are written once to ``OUTPUT_DIR/health_initial_weights.pt``
so that a resumed run still measures from iteration 0.
"""
import logging
import os

import torch
import torch.distributed as dist
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..evaluation.view_retrieval import embed_views, make_retrieval_views, retrieval_top1
from ..modeling.contract import PretrainingModel
from ..modeling.health import effective_rank, embedding_spread
from ..utils.atomic_io import atomic_write, atomic_write_json
from .momentum import unwrap_model

__all__ = ["HealthMonitorHook", "TrainingCollapsedError", "weight_groups"]

logger = logging.getLogger(__name__)

INITIAL_WEIGHTS_FILE = "health_initial_weights.pt"
SUMMARY_FILE = "health_summary.json"
RESNET_STAGES = ("stem", "res2", "res3", "res4", "res5")


class TrainingCollapsedError(RuntimeError):
    """Raised by the hook when OBJPRETRAIN.HEALTH.STOP_ON_COLLAPSE is set and a monitor stayed unhealthy."""


def _group_of(name):
    """The group a parameter of ``online_network`` belongs to: its ResNet stage (stem, res2 ... res5) for
    backbone parameters (bottom-up of an FPN included), "fpn" for FPN convs, else its top-level module."""
    parts = name.split(".")
    if parts[0] == "backbone":
        parts = parts[2:] if parts[1] == "bottom_up" else parts[1:]
        return parts[0] if parts[0] in RESNET_STAGES else "fpn"
    return parts[0]


def weight_groups(network):
    """``{group: [(name, weight)]}`` of the multi-dimensional (conv, linear) parameters of ``network``."""
    groups = {}
    for name, param in network.named_parameters():
        if param.ndim > 1:
            groups.setdefault(_group_of(name), []).append((name, param))
    return groups


@torch.no_grad()
def _relative_change(params, reference):
    diff = sum(float((p.detach().float() - reference[n]).pow(2).sum()) for n, p in params)
    norm = sum(float(reference[n].pow(2).sum()) for n, _ in params)
    return (diff / max(norm, 1e-30)) ** 0.5


class HealthMonitorHook(HookBase):
    """See the module docstring. ``cfg`` is the trainer's config; the model is a
    :class:`~objpretrain.modeling.contract.PretrainingModel` (its ``online_network``, ``health_record()``,
    ``momentum_pairs()``, ``image_features``, ``normalize`` and ``view_size``)."""

    def __init__(self, cfg):
        health = cfg.OBJPRETRAIN.HEALTH
        self.period = int(health.PERIOD) or int(cfg.OBJPRETRAIN.LOG_PERIOD)
        self.retrieval_period = int(health.RETRIEVAL_PERIOD)
        self.collapse_cosine = float(health.COLLAPSE_COSINE)
        self.min_movement = float(health.MIN_MOVEMENT)
        self.patience = int(health.PATIENCE)
        self.stop_on_collapse = bool(health.STOP_ON_COLLAPSE)
        self.cfg = cfg
        self.output_dir = cfg.OUTPUT_DIR
        self.initial_retrieval = None
        self.initial_rank = None
        self.latest = {}
        self._unhealthy_periods = {}
        self._views = None
        self.retrieval_dataset = None

    # ---------------------------------------------------------------- setup
    def _model(self):
        return unwrap_model(self.trainer.model)

    def before_train(self):
        model = self._model()
        if not isinstance(model, PretrainingModel):
            raise TypeError(f"HealthMonitorHook needs a PretrainingModel (objpretrain.modeling.contract); "
                            f"{type(model).__name__} is not one")
        self._groups = weight_groups(model.online_network)
        current = self._snapshot()
        path = os.path.join(self.output_dir, INITIAL_WEIGHTS_FILE)
        if self.trainer.iter == 0 or not os.path.exists(path):
            if self.trainer.iter > 0:
                logger.warning("Health: %s is missing; backbone movement of this resumed run is measured from "
                               "iteration %d, not from 0", path, self.trainer.iter)
            self._initial = current
            if comm.is_main_process():
                atomic_write(path, lambda f: torch.save(current, f))
        else:
            self._initial = torch.load(path, map_location="cpu", weights_only=True)
        self._last = current
        if self.retrieval_period > 0 and comm.is_main_process():
            self._views = self._build_retrieval_views()
            if self.initial_retrieval is None:
                # Measured before any step (or, for a run resumed without it, now: logged as such).
                self.initial_retrieval, self.initial_rank = self._retrieval()
                logger.info("Health: view retrieval of the weights at iteration %d: %.1f %% (chance %.1f %%)",
                            self.trainer.iter, 100 * self.initial_retrieval, 100 * self._views.chance)

    def _snapshot(self):
        return {n: p.detach().float().cpu().clone() for params in self._groups.values() for n, p in params}

    def _build_retrieval_views(self):
        health = self.cfg.OBJPRETRAIN.HEALTH
        name = health.RETRIEVAL_DATASET or self.cfg.DATASETS.TRAIN[0]
        if not health.RETRIEVAL_DATASET:
            logger.warning("Health: OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET is empty; view retrieval uses images of "
                           "the training set %r (not held out)", name)
        dicts = DatasetCatalog.get(name)
        count = min(int(health.RETRIEVAL_IMAGES), len(dicts))
        step = len(dicts) / max(count, 1)
        files = [dicts[int(i * step)]["file_name"] for i in range(count)]
        size = int(health.RETRIEVAL_SIZE) or self._model().view_size
        views = make_retrieval_views(files, size, seed=int(health.RETRIEVAL_SEED))
        self.retrieval_dataset = name
        logger.info("Health: view retrieval on %d images of %r at %d px, every %d iterations",
                    len(views), name, size, self.retrieval_period)
        return views

    def _retrieval(self):
        """(view-retrieval top-1, effective rank of the features of both views) of the current weights."""
        model = self._model()
        features = embed_views(model, lambda m, x: m.image_features(x), self._views, model.normalize,
                               device=model.device)
        return retrieval_top1(*features), effective_rank(torch.cat(features))

    # ---------------------------------------------------------------- every period
    def after_step(self):
        iteration = self.trainer.iter + 1
        if iteration % self.period == 0 or iteration == self.trainer.max_iter:
            self._measure(iteration)
        if (self._views is not None and (iteration % self.retrieval_period == 0
                                         or iteration == self.trainer.max_iter)):
            self.latest["view_retrieval"], self.latest["feature_rank"] = self._retrieval()
            self.latest["view_retrieval_initial"] = self.initial_retrieval
            self.latest["feature_rank_initial"] = self.initial_rank
            self.trainer.storage.put_scalars(**{f"health/{k}": self.latest[k] for k in
                                                ("view_retrieval", "view_retrieval_initial", "feature_rank",
                                                 "feature_rank_initial") if self.latest[k] is not None},
                                             smoothing_hint=False)

    def _measure(self, iteration):
        model = self._model()
        values = {}
        record = model.health_record()
        if record is not None:
            for name, embedding in record.embeddings.items():
                values[f"{name}_spread"], values[f"{name}_cosine_to_mean"] = embedding_spread(embedding)
                values[f"{name}_norm"] = float(embedding.float().flatten(1).norm(dim=1).mean())
            losses = {name: value for name, (value, _) in self.trainer.storage.latest().items()}
            if len(record.collapse_losses) == 1 and "total_loss" in losses:
                # Detectron2 stores a model's losses one by one only when there are several; a lone loss is
                # total_loss.
                losses.setdefault(next(iter(record.collapse_losses)), losses["total_loss"])
            for loss_name, collapse in record.collapse_losses.items():
                values[f"{loss_name}_collapse_value"] = float(collapse)
                if loss_name in losses:
                    values[f"{loss_name}_over_collapse"] = losses[loss_name] / max(float(collapse), 1e-12)
        current = self._snapshot()
        for group, params in self._groups.items():
            values[f"move_{group}_since_start"] = _relative_change(params, self._initial)
            values[f"move_{group}_last_period"] = _relative_change(params, self._last)
        self._last = current
        backbones = model.momentum_pairs().get("backbone")
        if backbones is not None:
            online = dict(backbones[0].named_parameters())
            target_params = [(n, p) for n, p in backbones[1].named_parameters() if n in online]
            values["online_target_distance"] = _relative_change(
                [(n, online[n]) for n, _ in target_params], {n: p.detach().float() for n, p in target_params}
            )
        self.latest.update(values)
        self.latest["iteration"] = iteration
        self.trainer.storage.put_scalars(**{f"health/{k}": v for k, v in values.items()}, smoothing_hint=False)
        self._check(iteration, values)

    def _check(self, iteration, values):
        problems = {}
        for key, value in values.items():
            if key.endswith("_cosine_to_mean") and not key.startswith("target"):
                problems[key] = (value >= self.collapse_cosine,
                                 f"cosine to the batch-mean direction {value:.3f} >= {self.collapse_cosine} "
                                 "(embeddings collapsed)")
            elif key.endswith("_last_period") and key[len("move_"):-len("_last_period")] in RESNET_STAGES:
                problems[key] = (value < self.min_movement,
                                 f"relative weight change {value:.2e} < {self.min_movement:g} in the last "
                                 f"{self.period} iterations (backbone stage not moving)")
        unhealthy = []
        for key, (bad, message) in problems.items():
            count = self._unhealthy_periods[key] = self._unhealthy_periods.get(key, 0) + 1 if bad else 0
            if count >= self.patience:
                unhealthy.append(f"health/{key} at iteration {iteration}: {message} for {count} periods")
                if count == self.patience:  # once per episode; a monitor that recovers may warn again
                    logger.warning("Health: %s", unhealthy[-1])
        stop = torch.tensor(int(bool(unhealthy) and self.stop_on_collapse))
        if comm.get_world_size() > 1:  # every rank stops together, or the others would hang in DDP
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if bool(stop):
            reason = "; ".join(unhealthy) or f"another rank found the run unhealthy at iteration {iteration}"
            raise TrainingCollapsedError(f"{reason} (OBJPRETRAIN.HEALTH.STOP_ON_COLLAPSE is set)")

    # ---------------------------------------------------------------- end and checkpoints
    def after_train(self):
        if comm.is_main_process() and self.latest:
            summary = dict(self.latest)
            if self._views is not None:
                summary["view_retrieval_chance"] = self._views.chance
                summary["view_retrieval_dataset"] = self.retrieval_dataset
            atomic_write_json(os.path.join(self.output_dir, SUMMARY_FILE), summary, indent=1)
            logger.info("Health summary: %s", format_summary(summary))

    def state_dict(self):
        return {"initial_retrieval": self.initial_retrieval, "initial_rank": self.initial_rank}

    def load_state_dict(self, state_dict):
        self.initial_retrieval = state_dict.get("initial_retrieval")
        self.initial_rank = state_dict.get("initial_rank")


def format_summary(summary):
    """One line of the values a reader checks first: spreads, backbone movement, retrieval against init."""
    parts = [f"{k} {v:.3f}" for k, v in summary.items() if k.endswith(("_spread", "_cosine_to_mean"))]
    for key, ratio in summary.items():
        if key.endswith("_over_collapse"):
            loss = key[: -len("_over_collapse")]
            parts.append(f"{loss} {ratio:.2f} x its collapse value {summary[loss + '_collapse_value']:.3f}")
    parts += [f"{k} {v:.2e}" for k, v in summary.items()
              if k.startswith("move_") and k.endswith("_since_start")]
    if summary.get("view_retrieval") is not None:
        parts.append(f"view retrieval on {summary.get('view_retrieval_dataset', '?')} "
                     f"{100 * summary['view_retrieval']:.1f} % (initial weights "
                     f"{100 * summary['view_retrieval_initial']:.1f} %, chance "
                     f"{100 * summary.get('view_retrieval_chance', 0):.1f} %)")
    if summary.get("feature_rank") is not None and summary.get("feature_rank_initial") is not None:
        parts.append(f"effective rank of the image features {summary['feature_rank']:.1f} (initial weights "
                     f"{summary['feature_rank_initial']:.1f})")
    return ", ".join(parts)
