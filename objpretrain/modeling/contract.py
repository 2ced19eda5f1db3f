"""The contract between a pretraining meta-architecture and the rest of objpretrain (docs/design.md, "The model
contract"): what a model declares and offers, each read in one place. In the spirit of solo-learn's methods, which
declare ``learnable_params`` and ``momentum_pairs`` for their trainer.

The trainer, its hooks and the health monitors use a pretraining model only through :class:`PretrainingModel`: they
test ``isinstance(model, PretrainingModel)`` (never ``hasattr``) and read nothing it does not list. Every pretraining
meta-architecture in META_ARCH_REGISTRY derives from it, through ``objpretrain.modeling.momentum_model``.
"""
from abc import ABCMeta, abstractmethod

from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..config import ConfigError
from .health import HealthRecord

__all__ = ["PretrainingModel", "dataset_mapper_name", "pretraining_model_class"]


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


def pretraining_model_class(cfg):
    """The class of MODEL.META_ARCHITECTURE; a :class:`ConfigError` when it is not registered or is not a
    :class:`PretrainingModel`."""
    name = cfg.MODEL.META_ARCHITECTURE
    registered = dict(META_ARCH_REGISTRY)
    pretraining = sorted(n for n, c in registered.items() if isinstance(c, type) and issubclass(c, PretrainingModel))
    model_class = registered.get(name)
    if not (isinstance(model_class, type) and issubclass(model_class, PretrainingModel)):
        known = "is not a registered meta-architecture" if model_class is None else "is not a pretraining model"
        raise ConfigError(f"MODEL.META_ARCHITECTURE {name!r} {known}; the pretraining models are {pretraining}")
    return model_class


def dataset_mapper_name(cfg):
    """The registered name of the dataset mapper that pretrains ``cfg``'s model: the one its class declares
    (``dataset_mapper``). OBJPRETRAIN.MAPPER may be empty, or name that mapper (registered name, or short name
    without "Mapper", in any case) as configs did before models declared it; another name is a :class:`ConfigError`
    that names both."""
    declared = pretraining_model_class(cfg).dataset_mapper
    configured = cfg.OBJPRETRAIN.MAPPER
    spellings = {declared.lower(), declared.lower().removesuffix("mapper")}
    if configured and configured.lower() not in spellings:
        raise ConfigError(f"OBJPRETRAIN.MAPPER is {configured!r} but MODEL.META_ARCHITECTURE "
                          f"{cfg.MODEL.META_ARCHITECTURE!r} takes the {declared}; drop the OBJPRETRAIN.MAPPER override "
                          "(the model names its mapper) or choose the meta-architecture of that mapper")
    return declared
