"""The model contract (objpretrain.modeling.contract): every pretraining meta-architecture declares a registered
mapper, and what it offers the engine (momentum pairs, predictor parameters, view size) is what the engine found by
names and ``hasattr`` before."""
import os

import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from objpretrain.config import ConfigError, get_pretrain_cfg
from objpretrain.data.build import MAPPER_REGISTRY
from objpretrain.engine import PretrainTrainer
from objpretrain.modeling.contract import PretrainingModel
from test_oac_models import _tiny_cfg as tiny_oac_cfg
from test_soco_model import tiny_cfg as tiny_soco_cfg

PRETRAINING_MODELS = sorted(name for name, cls in META_ARCH_REGISTRY
                            if isinstance(cls, type) and issubclass(cls, PretrainingModel))


def test_every_pretraining_meta_architecture_declares_a_registered_mapper():
    assert PRETRAINING_MODELS == ["OACBYOL", "OACDenseCL", "OACMoCo", "SoCo", "SoCoC4"]
    for name in PRETRAINING_MODELS:
        assert META_ARCH_REGISTRY.get(name).dataset_mapper in MAPPER_REGISTRY, name


def _models(repo_root):
    c4 = ["MODEL.META_ARCHITECTURE", "SoCoC4", "MODEL.BACKBONE.NAME", "build_resnet_backbone",
          "MODEL.RESNETS.OUT_FEATURES", "['res4']", "MODEL.SOCO.IN_FEATURES", "['res4']",
          "MODEL.SOCO.POOLER_RESOLUTION", "6", "MODEL.ROI_HEADS.NAME", "Res5ROIHeads"]
    for cfg in (tiny_soco_cfg(repo_root), tiny_soco_cfg(repo_root, *c4)):
        yield cfg, cfg.INPUT.SOCO.VIEW_SIZE
    for arch in ("OACMoCo", "OACBYOL", "OACDenseCL"):
        cfg = tiny_oac_cfg(arch)
        yield cfg, cfg.INPUT.OAC.CROP_SIZE


def test_each_model_offers_the_pairs_groups_and_view_size_the_engine_reads(repo_root):
    for cfg, view_size in _models(repo_root):
        torch.manual_seed(0)
        model = build_model(cfg)
        name = cfg.MODEL.META_ARCHITECTURE
        assert model.view_size == view_size, name
        # Momentum pairs: every target parameter, each with the online parameter of the same name.
        pairs = model.momentum_pairs()
        paired = {id(p) for _, target in pairs.values() for p in target.parameters()}
        assert paired == {id(p) for p in model.target_network.parameters()}, name
        assert "backbone" in pairs, name
        for online, target in pairs.values():
            online_names = {n for n, _ in online.named_parameters()}
            assert {n for n, _ in target.named_parameters()} <= online_names, name
        # Predictor group: the parameters of the modules named "predictor" (BYOL's and SoCo's q), no others.
        predictor = {id(p) for n, p in model.named_parameters() if "predictor" in n.split(".")}
        assert {id(p) for p in model.parameter_groups().get("predictor", ())} == predictor, name
        assert bool(predictor) == (name in ("SoCo", "SoCoC4", "OACBYOL")), name
        # Image features: one pooled vector per image.
        images = model.normalize(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
        assert model.image_features(images).shape[0] == 2, name


def test_a_training_forward_records_health_for_the_hook(repo_root):
    from test_soco_model import make_soco_batch

    model = build_model(tiny_soco_cfg(repo_root))
    assert model.health_record() is None
    losses = model(make_soco_batch())
    record = model.health_record()
    assert set(record.collapse_losses) == set(losses)
    assert not any(e.requires_grad for e in record.embeddings.values())


def test_the_pretraining_trainer_refuses_a_model_outside_the_contract(repo_root):
    cfg = get_pretrain_cfg(os.path.join(repo_root, "configs/demo/finetune_trees_r18_fpn.yaml"), ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ConfigError, match="^MODEL.META_ARCHITECTURE 'GeneralizedRCNN' is not a pretraining model"):
        PretrainTrainer(cfg)
