"""The contract between a pretraining meta-architecture and the rest of objpretrain (docs/design.md, "The model
contract"): what a model declares and offers, each read in one place. In the spirit of solo-learn's methods, which
declare ``learnable_params`` and ``momentum_pairs`` for their trainer.

The trainer, its hooks and the health monitors use a pretraining model only through :class:`PretrainingModel`: they
test ``isinstance(model, PretrainingModel)`` (never ``hasattr``) and read nothing it does not list. Every pretraining
meta-architecture in META_ARCH_REGISTRY derives from it, through ``objpretrain.modeling.momentum_model``.
"""
from abc import ABCMeta, abstractmethod

from torch import nn

from .health import HealthRecord

__all__ = ["PretrainingModel"]


class PretrainingModel(nn.Module, metaclass=ABCMeta):
    """A pretraining meta-architecture: ``forward(batched_inputs)`` takes a list of its mapper's dicts and returns a
    dict of losses in training.

    Declared by the class:

    - ``dataset_mapper``: the registered name (``objpretrain.data.build.MAPPER_REGISTRY``) of the dataset mapper whose
      dicts ``forward`` takes; the pretraining loader builds that mapper.

    Set in ``__init__``:

    - ``online_network``: the network whose weights transfer, its ResNet (or FPN) under ``backbone``; the checkpoint
      converter exports it and the health monitors group its weights by ResNet stage;
    - ``view_size``: the side, in pixels, of the square views it trains on (the health monitors' view retrieval
      renders its images at that size);
    - ``momentum_base`` and ``momentum_end``: the EMA coefficient tau at the first and the last iteration (cosine in
      between), for a model with :meth:`momentum_pairs`.

    The methods below are the rest; the defaults are for a model without a target network or a predictor.
    """

    dataset_mapper = ""
    _health = None

    def momentum_pairs(self):
        """``{name: (online module, target module)}``: after every optimizer step the engine moves each target towards
        its online module (``objpretrain.engine.momentum.MomentumTargetHook``: ``target <- tau * target + (1 - tau) *
        online``, parameters matched by name). The pair named ``"backbone"`` also gives the health monitors'
        online-target distance. Empty for a model without a target network."""
        return {}

    def parameter_groups(self):
        """``{name: [parameters]}`` the solver treats apart: ``"predictor"``, the parameters whose lr
        SOLVER.PREDICTOR_LR_FACTOR multiplies (BYOL's and SoCo's predictor q). Empty when there are none."""
        return {}

    def health_record(self):
        """The :class:`~objpretrain.modeling.health.HealthRecord` of the last training forward (detached embeddings,
        and the value each loss takes for a collapsed network), or None before the first; the health monitors read it
        once a period."""
        return self._health

    def _record_health(self, embeddings, collapse_losses):
        """Called by ``forward`` in training: keeps references to this step's embeddings (detached, no copy) and the
        collapse value of each loss (docs/pretraining.md, "Health monitors")."""
        self._health = HealthRecord(embeddings=embeddings, collapse_losses=collapse_losses)

    @abstractmethod
    def image_features(self, images):
        """(N, C) pooled res5 features of the online network for (N, 3, H, W) images already passed through
        :meth:`normalize`: what view retrieval compares (health monitors)."""

    @abstractmethod
    def normalize(self, images):
        """uint8 (or float) 0-255 images, N x C x H x W -> normalized float on the model's :attr:`device`."""

    @property
    @abstractmethod
    def device(self):
        """The device of the model's parameters and buffers."""

