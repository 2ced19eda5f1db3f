"""Finetuning from a converted checkpoint (tools/train_net.py), Res5ROIHeadsExtraNorm, COCO-json datasets and
Mini COCO (tools/make_mini_coco.py)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import get_norm

from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets import make_synthetic_coco, register_datasets_from_cfg
from objpretrain.data.datasets.coco_json import (
    _load_mini_coco,
    mini_coco_json,
    parse_coco_json_spec,
    register_coco_json,
)
from objpretrain.modeling.roi_heads import Res5ROIHeadsExtraNorm
from test_convert import DEMO_FINETUNE, DEMO_PRETRAIN, REPO, load_tool, randomize_norms, save_pretrain_checkpoint


@pytest.mark.parametrize("config, fractions, weight_decay, max_iter", [
    ("mask_rcnn_R_50_FPN_1x", (2 / 3, 8 / 9), 2.5e-5, 90000),
    ("mask_rcnn_R_50_FPN_2x", (2 / 3, 8 / 9), 2.5e-5, 180000),
    ("mask_rcnn_R_50_FPN_1x_mini5", (2 / 3, 8 / 9), 2.5e-5, 90000),
    ("mask_rcnn_R_50_FPN_1x_mini10", (2 / 3, 8 / 9), 2.5e-5, 90000),
    ("mask_rcnn_R_50_C4_1x", (2 / 3, 8 / 9), 2.5e-5, 90000),
    ("mask_rcnn_R_50_C4_2x", (2 / 3, 8 / 9), 2.5e-5, 180000),
    ("faster_rcnn_R_50_C4_voc", (3 / 4, 11 / 12), 1e-4, 24000),
])
def test_paper_finetune_protocol(config, fractions, weight_decay, max_iter):
    """SoCo §4.2: batch 16, lr 0.02, weight decay, lr steps at fixed fractions; SyncBN; RGB as pretrained."""
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs/finetune", config + ".yaml"))
    solver = cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.WEIGHT_DECAY, solver.MAX_ITER) == (
        16, 0.02, weight_decay, max_iter)
    assert tuple(solver.STEPS) == tuple(round(f * max_iter) for f in fractions)
    assert solver.WARMUP_ITERS == (100 if "voc" in config else 1000)
    assert cfg.MODEL.RESNETS.NORM == "SyncBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.INPUT.FORMAT == "RGB"
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    if "FPN" in config:
        assert cfg.MODEL.FPN.NORM == cfg.MODEL.ROI_BOX_HEAD.NORM == cfg.MODEL.ROI_MASK_HEAD.NORM == "SyncBN"
        assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    else:
        assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm"
    if "mini" in config:
        assert cfg.DATASETS.TRAIN == ("coco_2017_train_" + config.rsplit("_", 1)[1],)
    if "voc" in config:
        assert cfg.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
        assert cfg.DATASETS.TEST == ("voc_2007_test",)


def test_demo_finetune_matches_demo_pretraining():
    """The architecture keys that decide parameter shapes equal the SoCo demo pretraining config's."""
    pretrain, finetune = get_pretrain_cfg(DEMO_PRETRAIN), get_pretrain_cfg(DEMO_FINETUNE)
    for key in ("RESNETS.DEPTH", "RESNETS.RES2_OUT_CHANNELS", "RESNETS.NORM", "RESNETS.STRIDE_IN_1X1",
                "RESNETS.NUM_GROUPS", "RESNETS.WIDTH_PER_GROUP", "FPN.OUT_CHANNELS", "FPN.NORM", "FPN.IN_FEATURES",
                "ROI_BOX_HEAD.NUM_CONV", "ROI_BOX_HEAD.NUM_FC", "ROI_BOX_HEAD.CONV_DIM", "ROI_BOX_HEAD.FC_DIM",
                "ROI_BOX_HEAD.NORM", "PIXEL_MEAN", "PIXEL_STD"):
        a, b = pretrain.MODEL, finetune.MODEL
        for part in key.split("."):
            a, b = a[part], b[part]
        assert a == b, key
    assert finetune.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == pretrain.MODEL.SOCO.POOLER_RESOLUTION
    assert finetune.INPUT.FORMAT == pretrain.INPUT.FORMAT == "RGB"


@pytest.mark.parametrize("extra_norm", [True, False])
def test_res5_extra_norm(extra_norm):
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs/finetune/mask_rcnn_R_50_C4_1x.yaml"),
                           ["MODEL.RESNETS.NORM", "BN", "MODEL.ROI_BOX_HEAD.RES5_EXTRA_NORM", str(extra_norm)])
    res5, out_channels = Res5ROIHeadsExtraNorm._build_res5_block(cfg)
    names = [name for name, _ in res5.named_children()]
    assert names == (["0", "1", "2", "norm"] if extra_norm else ["0", "1", "2"])
    if extra_norm:
        assert type(res5.norm) is type(get_norm("BN", out_channels)) and res5.norm.num_features == out_channels == 2048
        # It is applied: in training mode every output channel comes out normalized.
        output = res5.train()(torch.randn(4, 1024, 14, 14) * 3 + 1)
        torch.testing.assert_close(output.mean(dim=(0, 2, 3)), torch.zeros(2048), atol=1e-4, rtol=0)


def test_coco_json_registration(tmp_path):
    json_path, image_root = make_synthetic_coco(str(tmp_path), num_images=2, image_size=32, seed=3)
    spec = f"ft_json_test:{json_path}:{image_root}"
    assert parse_coco_json_spec(spec) == ("ft_json_test", json_path, image_root)
    cfg = get_pretrain_cfg(None, ["DATASETS.COCO_JSON_REGISTER", f"['{spec}']"])
    assert register_datasets_from_cfg(cfg) == ["ft_json_test"]
    assert register_coco_json(spec) == "ft_json_test"  # the same spec again is a no-op
    assert MetadataCatalog.get("ft_json_test").evaluator_type == "coco"
    assert len(DatasetCatalog.get("ft_json_test")) == 2
    with pytest.raises(ValueError, match="already registered"):
        register_coco_json(f"ft_json_test:{json_path}:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_coco_json(f"other:{tmp_path}/missing.json:{image_root}")
    with pytest.raises(ValueError, match="expected 'name:json_file:image_root'"):
        parse_coco_json_spec("only_a_name")


def test_make_mini_coco(tmp_path, capsys, monkeypatch):
    json_path, image_root = make_synthetic_coco(str(tmp_path / "coco"), num_images=10, image_size=32, seed=1)
    make_mini_coco = load_tool("make_mini_coco")
    outputs = {}
    for seed in (0, 0, 1):
        output = str(tmp_path / f"mini_{seed}.json")
        argv = ["--input", json_path, "--percent", "30", "--seed", str(seed), "--output", output]
        assert make_mini_coco.main(argv) == 0
        with open(output) as f:
            subset = json.load(f)
        assert seed not in outputs or subset == outputs[seed]  # seeded: the same subset every time
        outputs[seed] = subset
    with open(json_path) as f:
        full = json.load(f)
    subset = outputs[0]
    kept = {image["id"] for image in subset["images"]}
    assert len(kept) == 3 and subset["categories"] == full["categories"]
    assert subset["annotations"] == [a for a in full["annotations"] if a["image_id"] in kept]
    assert kept != {image["id"] for image in outputs[1]["images"]}

    # The default output is where coco_2017_train_mini<percent> is registered.
    root = str(tmp_path / "datasets")
    os.makedirs(os.path.join(root, "coco", "annotations"))
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    assert make_mini_coco.main(["--input", json_path, "--percent", "50"]) == 0
    dicts = _load_mini_coco(mini_coco_json(root, 50), image_root, "mini50")
    assert len(dicts) == 5 and all(os.path.isfile(d["file_name"]) for d in dicts)
    with pytest.raises(FileNotFoundError, match="tools/make_mini_coco.py"):
        _load_mini_coco(mini_coco_json(root, 5), image_root, "mini5")
    metadata = MetadataCatalog.get("coco_2017_train_mini5")
    assert metadata.evaluator_type == "coco" and len(metadata.thing_classes) == 80
    assert metadata.json_file.endswith(os.path.join("coco", "annotations", "instances_train2017_mini5.json"))
    assert make_mini_coco.main(["--input", str(tmp_path / "absent.json")]) == 1
    assert "absent.json" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_from_converted_demo_checkpoint(synthetic_coco, tmp_path):
    """SoCo demo model -> tools/convert_ckpt.py -> tools/train_net.py on a COCO-json set -> COCO AP."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    pretrain = randomize_norms(build_model(get_pretrain_cfg(DEMO_PRETRAIN)))
    checkpoint = save_pretrain_checkpoint(pretrain, tmp_path / "pretrain")
    converted = str(tmp_path / "soco_demo.pkl")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/convert_ckpt.py"), checkpoint, converted, "--to", "d2-fpn",
         "--verify-config", DEMO_FINETUNE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "roi_heads.box_head" in result.stdout

    train_net = load_tool("train_net")
    output_dir = str(tmp_path / "finetune")
    spec = f"ft_synthetic:{synthetic_coco['json']}:{synthetic_coco['image_root']}"
    opts = ["DATASETS.TRAIN", "('ft_synthetic',)", "DATASETS.TEST", "('ft_synthetic',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "3",
            # Fewer RoIs: the 4conv box head dominates a CPU iteration.
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
            "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2, 3)",
            "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", output_dir]
    args = train_net.get_parser().parse_args(
        ["--config-file", DEMO_FINETUNE, "--register-coco", spec, "MODEL.WEIGHTS", converted] + opts)
    results = train_net.main(args)
    assert set(results) == {"bbox"} and math.isfinite(results["bbox"]["AP"])

    # Training started from the converted weights (the pretraining BN affine terms are far from the 1/0 init).
    final = torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)["model"]
    name = "backbone.bottom_up.res3.0.conv1.norm.weight"
    pretrained = pretrain.state_dict()["online_network." + name]
    assert (pretrained - 1).abs().max() > 0.3
    assert (final[name] - pretrained).abs().max() < 0.05

    args = train_net.get_parser().parse_args(
        ["--config-file", DEMO_FINETUNE, "--eval-only", "--register-coco", spec,
         "MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth")] + opts)
    evaluation = train_net.main(args)
    assert evaluation["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"], abs=1e-6)


@pytest.mark.parametrize("name, max_iter, weight_decay", [("mask_rcnn_R_50_FPN_1x_lvis.yaml", 180000, 1e-4),
                                                          ("mask_rcnn_R_50_FPN_soco_star_lvis.yaml", 90000, 2.5e-5)])
def test_lvis_configs_are_the_official_recipes_and_build(name, max_iter, weight_decay):
    """The official SoCo LVIS configs (detectron2_configs/LVIS_R_50_FPN_1x.yaml, SoCo_FPN_Star_400ep_lvis.yaml): LVIS
    v1 with its 1203 classes, repeat-factor sampling, 300 detections; Detectron2's builtin lvis_v1_val is an "lvis"
    set, which train_net evaluates with LVISEvaluator."""
    from detectron2.modeling import build_model

    cfg = get_pretrain_cfg(os.path.join(REPO, "configs", "finetune", name),
                           ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
                            "MODEL.ROI_BOX_HEAD.NORM", "BN", "MODEL.ROI_MASK_HEAD.NORM", "BN"])
    assert tuple(cfg.DATASETS.TRAIN) == ("lvis_v1_train",) and tuple(cfg.DATASETS.TEST) == ("lvis_v1_val",)
    assert (cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.TEST.DETECTIONS_PER_IMAGE, cfg.DATALOADER.SAMPLER_TRAIN,
            cfg.DATALOADER.REPEAT_THRESHOLD) == (1203, 300, "RepeatFactorTrainingSampler", 0.001)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.WEIGHT_DECAY, cfg.MODEL.MASK_ON) == (max_iter, weight_decay, True)
    assert MetadataCatalog.get("lvis_v1_val").evaluator_type == "lvis"
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 1204


BUILDERS = ["build_train_loader", "schedule_config", "build_model", "build_optimizer", "build_ddp_model",
            "build_step_trainer", "build_lr_scheduler", "build_checkpointer", "build_hooks"]


def _recording(trainer_class, calls):
    """A subclass of ``trainer_class`` whose builders append their name to ``calls``, then do what they did."""
    import inspect

    def recorded(name):
        def builder(cls_or_self, *args):
            calls.append(name)
            return getattr(super(subclass, cls_or_self), name)(*args)
        return classmethod(builder) if isinstance(inspect.getattr_static(trainer_class, name), classmethod) else builder

    subclass = type(f"Recording{trainer_class.__name__}", (trainer_class,), {n: recorded(n) for n in BUILDERS})
    return subclass


def test_both_trainers_are_made_by_their_builders_without_patching_detectron2(synthetic_coco, tmp_path):
    """One trainer pattern: ResumableTrainer.__init__ calls every builder, in order (a trainer customizes by
    overriding them, never __init__); the checkpointer is the atomic one from the start; Detectron2's
    create_ddp_model is not replaced."""
    import detectron2.engine.defaults as d2_defaults

    from objpretrain.engine import AtomicDetectionCheckpointer, FinetuneTrainer, PretrainTrainer, ResumableTrainer

    calls = []
    ddp_before = d2_defaults.create_ddp_model
    spec = f"ft_builders:{synthetic_coco['json']}:{synthetic_coco['image_root']}"
    cfg = get_pretrain_cfg(DEMO_FINETUNE, ["MODEL.DEVICE", "cpu", "DATASETS.COCO_JSON_REGISTER", f"('{spec}',)",
                                           "DATASETS.TRAIN", "('ft_builders',)", "DATASETS.TEST", "()",
                                           "MODEL.ROI_HEADS.NUM_CLASSES", "3", "DATALOADER.NUM_WORKERS", "0",
                                           "OUTPUT_DIR", str(tmp_path)])
    register_datasets_from_cfg(cfg)
    trainer = _recording(FinetuneTrainer, calls)(cfg)
    assert calls == BUILDERS
    assert type(trainer.checkpointer) is AtomicDetectionCheckpointer
    assert d2_defaults.create_ddp_model is ddp_before and ddp_before.__module__ == "detectron2.engine.defaults"
    for trainer_class in (PretrainTrainer, FinetuneTrainer):
        assert issubclass(trainer_class, ResumableTrainer) and "__init__" not in vars(trainer_class)
