"""Checkpoint conversion (objpretrain/checkpoint, tools/convert_ckpt.py): exact transfer into the finetune
configs, torchvision round trips, and clear errors for checkpoints that do not fit."""
import argparse
import importlib.util
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import build_resnet_backbone

import objpretrain  # noqa: F401
from objpretrain.checkpoint import (
    CheckpointError,
    check_against_model,
    convert_checkpoint,
    convert_state_dict,
    load_state_dict,
    save_conversion,
)
from objpretrain.config import get_pretrain_cfg
from objpretrain.utils.safe_pickle import UnsafePickleError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_PRETRAIN = os.path.join(REPO, "configs/demo/soco_r18_fpn_demo.yaml")
DEMO_FINETUNE = os.path.join(REPO, "configs/demo/finetune_trees_r18_fpn.yaml")
FPN_CONFIGS = ["mask_rcnn_R_50_FPN_1x", "mask_rcnn_R_50_FPN_2x", "mask_rcnn_R_50_FPN_1x_mini5",
               "mask_rcnn_R_50_FPN_1x_mini10"]
C4_CONFIGS = ["mask_rcnn_R_50_C4_1x", "mask_rcnn_R_50_C4_2x", "faster_rcnn_R_50_C4_voc"]
# Paper configs use SyncBN; on CPU they are built with plain BN (same parameter names and shapes).
CPU_BN = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN",
          "MODEL.ROI_MASK_HEAD.NORM", "BN"]
SOCO_CPU = CPU_BN + ["MODEL.SOCO.HEAD_NORM", "BN", "MODEL.SOCO.PROJECTOR_HIDDEN_DIM", "64",
                     "MODEL.SOCO.PREDICTOR_HIDDEN_DIM", "64"]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finetune_model(config, opts=()):
    path = config if os.path.isabs(config) else os.path.join(REPO, "configs/finetune", config + ".yaml")
    return build_model(get_pretrain_cfg(path, list(opts) + CPU_BN))


def randomize_norms(model):
    """Non-trivial BN statistics and affine parameters, so that a forgotten buffer shows in the outputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def incompatible_keys(model, pkl_path):
    """Detectron2's own view of loading ``pkl_path``: (missing, unexpected, incorrect_shapes)."""
    checkpointer = DetectionCheckpointer(model)
    return checkpointer._load_model(checkpointer._load_file(pkl_path))


def transferred(name):
    """Tensors of a detector that pretraining provides (the C4 extra norm is new by design)."""
    return name.startswith(("backbone.", "roi_heads.box_head.", "roi_heads.res5.")) and not name.startswith(
        "roi_heads.res5.norm.")


def save_pretrain_checkpoint(model, directory, name="model_final"):
    os.makedirs(str(directory), exist_ok=True)
    DetectionCheckpointer(model, save_dir=str(directory)).save(name, iteration=10)
    return os.path.join(str(directory), name + ".pth")


@pytest.fixture(scope="module")
def soco_demo(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_norms(build_model(get_pretrain_cfg(DEMO_PRETRAIN))).eval()
    path = save_pretrain_checkpoint(model, tmp_path_factory.mktemp("soco_demo"))
    return model, path


@pytest.fixture(scope="module")
def soco_r50_fpn():
    return build_model(get_pretrain_cfg(os.path.join(REPO, "configs/soco_r50_fpn.yaml"), SOCO_CPU)).state_dict()


@pytest.fixture(scope="module")
def soco_r50_c4():
    return build_model(get_pretrain_cfg(os.path.join(REPO, "configs/soco_r50_c4.yaml"), SOCO_CPU)).state_dict()


def test_soco_demo_transfers_exactly(soco_demo, tmp_path):
    pretrain, path = soco_demo
    output = str(tmp_path / "soco_demo.pkl")
    # The weights as pretrained (the default rescaling is tested below: the same function up to BN's eps).
    conversion, new = convert_checkpoint(path, output, "d2-fpn",
                                         model_state_dict=finetune_model(DEMO_FINETUNE).state_dict(),
                                         keep_weight_scale=True)
    assert {n.split(".")[1] for n in new} == {"rpn_head", "box_predictor"}
    assert not any(name.startswith(("projector", "predictor", "target_network")) for name in conversion.state_dict)

    detector = randomize_norms(finetune_model(DEMO_FINETUNE)).eval()
    incompatible = incompatible_keys(detector, output)
    assert [k for k in incompatible.missing_keys if transferred(k)] == []
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []

    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, actual = pretrain.online_network.backbone(images), detector.backbone(images)
        assert sorted(expected) == sorted(actual) == ["p2", "p3", "p4", "p5", "p6"]
        for level in expected:
            torch.testing.assert_close(actual[level], expected[level], atol=1e-5, rtol=1e-5)
        rois = torch.randn(5, 64, 7, 7)
        torch.testing.assert_close(detector.roi_heads.box_head(rois), pretrain.online_network.box_head(rois),
                                   atol=1e-5, rtol=1e-5)


def test_target_encoder_converts_the_momentum_network(soco_demo, tmp_path):
    pretrain, path = soco_demo
    state_dict = load_state_dict(path)
    state_dict = OrderedDict((k, v + 1.0 if k.startswith("target_network.") and v.is_floating_point() else v)
                             for k, v in state_dict.items())
    conversion = convert_state_dict(state_dict, "d2-fpn", encoder="target", keep_weight_scale=True)
    source = "target_network.backbone.bottom_up.res3.0.conv1.weight"
    assert conversion.sources["backbone.bottom_up.res3.0.conv1.weight"] == source
    assert torch.equal(conversion.state_dict["backbone.bottom_up.res3.0.conv1.weight"], state_dict[source])
    assert not torch.equal(state_dict[source], pretrain.state_dict()[source.replace("target", "online")])


@pytest.mark.parametrize("config", FPN_CONFIGS)
def test_soco_r50_fpn_fits_paper_configs(soco_r50_fpn, config, tmp_path):
    conversion = convert_state_dict(soco_r50_fpn, "d2-fpn")
    detector = finetune_model(config)
    new = check_against_model(conversion, detector.state_dict())
    assert not [n for n in new if transferred(n)]
    save_conversion(conversion, str(tmp_path / "soco.pkl"))
    incompatible = incompatible_keys(detector, str(tmp_path / "soco.pkl"))
    assert [k for k in incompatible.missing_keys if transferred(k)] == []
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    # The paper's 4conv1fc head and normed FPN really are what was transferred.
    assert "roi_heads.box_head.conv4.norm.running_var" in conversion.state_dict
    assert "backbone.fpn_lateral2.norm.weight" in conversion.state_dict


@pytest.mark.parametrize("config", C4_CONFIGS)
def test_soco_r50_c4_fits_paper_configs(soco_r50_c4, config):
    conversion = convert_state_dict(soco_r50_c4, "d2-c4")
    detector = finetune_model(config)
    new = check_against_model(conversion, detector.state_dict())
    assert [n for n in new if n.startswith(("backbone.", "roi_heads.res5."))] == [
        "roi_heads.res5.norm." + leaf
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def test_image_level_model_converts_backbone_only(tmp_path):
    cfg = get_pretrain_cfg(os.path.join(REPO, "configs/oac/moco_v2_r50_obj_obj_dilate.yaml"),
                           ["MODEL.DEVICE", "cpu", "MODEL.OAC.QUEUE_SIZE", "16", "MODEL.RESNETS.DEPTH", "18",
                            "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    oac = build_model(cfg).state_dict()
    conversion = convert_state_dict(oac, "d2-fpn")
    assert [m for m, _ in conversion.new_modules] == ["backbone.fpn_*", "roi_heads.box_head"]
    assert all(k.startswith("backbone.bottom_up.") for k in conversion.state_dict)
    dropped = {source.split(".")[0] for source, _, _ in conversion.dropped}
    assert "queues" in dropped and "target_network" in dropped
    new = check_against_model(conversion, finetune_model(DEMO_FINETUNE).state_dict())
    assert any(n.startswith("backbone.fpn_lateral") for n in new)
    assert not any(n.startswith("backbone.bottom_up.") for n in new)


def test_wrong_kind_for_target_fails_clearly(soco_r50_c4, soco_demo):
    with pytest.raises(CheckpointError, match="SoCo-C4.*no FPN.*--to d2-c4"):
        convert_state_dict(soco_r50_c4, "d2-fpn")
    with pytest.raises(CheckpointError, match="inside an FPN backbone.*--to d2-fpn"):
        convert_state_dict(soco_demo[0].state_dict(), "d2-c4")
    # Both still give their ResNet.
    assert "res5.2.conv3.weight" in convert_state_dict(soco_r50_c4, "d2-backbone").state_dict


def test_r18_c4_converts_to_d2_c4_only():
    """SoCo-C4 on R18: basic-block res2-res4 and Res5ROIHeads' bottleneck res5, which Detectron2's R18-C4 detector
    also has; --to d2-c4 writes it, and the other targets say why they cannot."""
    pretrain = build_model(get_pretrain_cfg(os.path.join(REPO, "configs/demo/soco_r18_c4_demo.yaml"), SOCO_CPU))
    state = pretrain.state_dict()
    conversion = convert_state_dict(state, "d2-c4")
    detector = finetune_model(os.path.join(REPO, "configs/demo/finetune_trees_r18_c4.yaml"))
    new = check_against_model(conversion, detector.state_dict())
    assert [n for n in new if n.startswith(("backbone.", "roi_heads.res5."))] == [
        "roi_heads.res5.norm." + leaf
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    assert {"backbone.res4.1.conv2.weight", "roi_heads.res5.2.conv3.weight"} <= set(conversion.state_dict)
    for target in ("d2-fpn", "d2-backbone", "torchvision"):
        with pytest.raises(CheckpointError, match="R18-C4 model.*--to d2-c4"):
            convert_state_dict(state, target)
    # A basic res2-res4 with anything but 3 bottleneck res5 blocks is still an error.
    broken = OrderedDict((k, v) for k, v in state.items() if ".res5.2." not in k)
    with pytest.raises(CheckpointError, match="mix basic"):
        convert_state_dict(broken, "d2-c4")


def test_mismatched_config_is_reported(soco_demo):
    conversion = convert_state_dict(soco_demo[0].state_dict(), "d2-fpn")
    detector = finetune_model(DEMO_FINETUNE, ["MODEL.ROI_BOX_HEAD.CONV_DIM", "32"])
    with pytest.raises(CheckpointError, match="roi_heads.box_head.conv1.weight: checkpoint"):
        check_against_model(conversion, detector.state_dict())
    detector = finetune_model(DEMO_FINETUNE, ["MODEL.ROI_BOX_HEAD.NUM_CONV", "5"])
    with pytest.raises(CheckpointError, match="box_head.conv5.weight is in the model but not in the checkpoint"):
        check_against_model(conversion, detector.state_dict())


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("online_network.backbone.bottom_up.res3.1.conv2.weight"), r"res3\.1\.conv2\.weight is missing"),
    (lambda sd: sd.pop("online_network.backbone.bottom_up.res4.0.conv1.norm.running_var"),
     r"res4\.0\.conv1: norm tensors \['norm.running_var'\] are missing"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("online_network.backbone.bottom_up.res5.0.")],
     r"res5: blocks \[0\] are missing"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("online_network.backbone.bottom_up.res5.1.")],
     r"blocks per stage \(2, 2, 2, 1\) match no ResNet depth"),
    (lambda sd: sd.__setitem__("online_network.backbone.bottom_up.res2.0.conv1.norm.weight", torch.ones(7)),
     r"res2\.0\.conv1\.norm\.weight has shape \(7,\)"),
    (lambda sd: sd.__setitem__("online_network.backbone.fpn_lateral3.weight", torch.ones(64, 99, 1, 1)),
     r"fpn_lateral3\.weight .* does not take res3's 128 channels"),
    (lambda sd: sd.pop("online_network.box_head.fc1.weight"), r"fc1\.weight is missing"),
    (lambda sd: sd["online_network.box_head.conv2.weight"].view(-1)[0].fill_(float("nan")), "non-finite"),
])
def test_broken_checkpoint_is_rejected(soco_demo, edit, message):
    state_dict = OrderedDict((k, v.clone()) for k, v in soco_demo[0].state_dict().items())
    edit(state_dict)
    with pytest.raises(CheckpointError, match=message):
        convert_state_dict(state_dict, "d2-fpn")


def test_cli_errors_name_the_file(soco_demo, tmp_path, capsys):
    convert_ckpt = load_tool("convert_ckpt")
    with open(soco_demo[1], "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    for path in (truncated, garbage, tmp_path / "absent.pth"):
        assert convert_ckpt.main([str(path), str(tmp_path / "out.pkl"), "--to", "d2-fpn"]) == 1
        err = capsys.readouterr().err
        assert str(path) in err and err.startswith("error:")
    assert not (tmp_path / "out.pkl").exists()
    # A real process exits non-zero too.
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools/convert_ckpt.py"), str(truncated),
                             str(tmp_path / "out.pkl"), "--to", "d2-c4"], capture_output=True, text=True)
    assert result.returncode == 1 and str(truncated) in result.stderr and "truncated" in result.stderr


def test_cli_converts_and_reports(soco_demo, tmp_path, capsys):
    convert_ckpt = load_tool("convert_ckpt")
    output = str(tmp_path / "demo.pkl")
    assert convert_ckpt.main([soco_demo[1], output, "--to", "d2-fpn", "--verify-config", DEMO_FINETUNE]) == 0
    out = capsys.readouterr().out
    assert "dropped: pretraining-only module 'projector'" in out and "roi_heads.box_predictor" in out
    assert convert_ckpt.main([soco_demo[1], str(tmp_path / "demo_c4.pkl"), "--to", "d2-c4"]) == 1
    assert "--to d2-fpn" in capsys.readouterr().err


def test_torchvision_round_trip(tmp_path):
    torch.manual_seed(0)
    reference = randomize_norms(torchvision.models.resnet50(weights=None)).eval()
    original = reference.state_dict()
    torch.save({"state_dict": original}, tmp_path / "tv.pth")

    # The weights as they were (by default d2 targets get the initializer's weight scale back): a round trip.
    conversion, _ = convert_checkpoint(str(tmp_path / "tv.pth"), str(tmp_path / "r50.pkl"), "d2-backbone",
                                       keep_weight_scale=True)
    assert [s for s, _, _ in conversion.dropped] == ["fc.weight", "fc.bias"]
    cfg = get_pretrain_cfg(None, ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.STRIDE_IN_1X1", "False",
                                  "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", '["res5"]',
                                  "MODEL.BACKBONE.FREEZE_AT", "0"])
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    result = backbone.load_state_dict(load_state_dict(str(tmp_path / "r50.pkl")))
    assert result.missing_keys == [] and result.unexpected_keys == []
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(images)
        torch.testing.assert_close(backbone(images)["res5"], expected, atol=1e-5, rtol=1e-5)

    convert_checkpoint(str(tmp_path / "r50.pkl"), str(tmp_path / "back.pth"), "torchvision")
    back = torch.load(tmp_path / "back.pth")
    assert set(back) == set(original) - {"fc.weight", "fc.bias"}
    for name, tensor in back.items():
        assert torch.equal(tensor, original[name]), name
    assert torchvision.models.resnet50(weights=None).load_state_dict(back, strict=False).missing_keys == [
        "fc.weight", "fc.bias"]


def test_moco_release_layout_picks_the_encoder(tmp_path):
    query = torchvision.models.resnet18(weights=None).state_dict()
    key = {k: v + 1 if v.is_floating_point() else v for k, v in query.items()}
    state_dict = {**{"module.encoder_q." + k: v for k, v in query.items()},
                  **{"module.encoder_k." + k: v for k, v in key.items()},
                  "module.queue": torch.zeros(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    # Released MoCo/DenseCL files also hold Python objects, which only the full unpickler reads, on request.
    torch.save({"epoch": 200, "arch": "resnet18", "args": argparse.Namespace(lr=0.03), "state_dict": state_dict},
               tmp_path / "moco.pth.tar")
    with pytest.raises(UnsafePickleError, match="moco.pth.tar: refused to unpickle argparse.Namespace.*"
                                                "--unsafe-full-unpickle"):
        load_state_dict(str(tmp_path / "moco.pth.tar"))
    state_dict = load_state_dict(str(tmp_path / "moco.pth.tar"), unsafe_full_unpickle=True)
    for encoder, weights in (("online", query), ("target", key)):
        conversion = convert_state_dict(state_dict, "d2-c4", encoder=encoder, keep_weight_scale=True)
        assert torch.equal(conversion.state_dict["roi_heads.res5.1.conv2.weight"], weights["layer4.1.conv2.weight"])
        assert torch.equal(conversion.state_dict["backbone.stem.conv1.norm.running_mean"], weights["bn1.running_mean"])
    reasons = {reason for _, _, reason in convert_state_dict(state_dict, "d2-fpn").dropped}
    assert reasons == {"the other encoder (--encoder picks one)", "not part of the ResNet",
                       "classifier / projection head (no Detectron2 name)"}


def test_weight_scale_restored_with_the_same_function(soco_demo, tmp_path):
    """Convs that a BatchNorm follows get their initializer's norm back (weight_scale.py), the BN statistics follow,
    and the detector computes what the pretraining network computed, with BN on running and on batch statistics."""
    from objpretrain.checkpoint import initializer_norm

    pretrain, path = soco_demo
    state_dict = load_state_dict(path)
    grown = {"online_network.backbone.bottom_up.stem.conv1": 4.7, "online_network.backbone.bottom_up.res3.0.conv1": 0.3,
             "online_network.backbone.fpn_output3": 2.0, "online_network.box_head.conv2": 3.0}
    for conv, c in grown.items():  # the same function at another weight scale, as SGD pretraining leaves it
        state_dict[conv + ".weight"] = state_dict[conv + ".weight"] * c
        state_dict[conv + ".norm.running_mean"] = state_dict[conv + ".norm.running_mean"] * c
        state_dict[conv + ".norm.running_var"] = state_dict[conv + ".norm.running_var"] * c * c
    torch.save({"model": state_dict}, str(tmp_path / "grown.pth"))
    output = str(tmp_path / "rescaled.pkl")
    conversion, _ = convert_checkpoint(str(tmp_path / "grown.pth"), output, "d2-fpn")
    factors = dict(conversion.rescaled)
    assert factors["backbone.bottom_up.stem.conv1.weight"] == pytest.approx(1 / 4.7, rel=0.1)
    assert factors["roi_heads.box_head.conv2.weight"] == pytest.approx(1 / 3.0, rel=0.1)
    for name, _ in conversion.rescaled:
        weight = conversion.state_dict[name]
        assert float(weight.norm()) == pytest.approx(initializer_norm(name, weight), rel=1e-4)
    assert "roi_heads.box_head.fc1.weight" not in factors  # no BatchNorm after it: its scale is its function

    kept, _ = convert_checkpoint(str(tmp_path / "grown.pth"), str(tmp_path / "kept.pkl"), "d2-fpn",
                                 keep_weight_scale=True)
    assert kept.rescaled is None
    torch.testing.assert_close(kept.state_dict["backbone.bottom_up.stem.conv1.weight"],
                               state_dict["online_network.backbone.bottom_up.stem.conv1.weight"])

    detector = randomize_norms(finetune_model(DEMO_FINETUNE))
    DetectionCheckpointer(detector).load(output)
    images = torch.randn(4, 3, 64, 96)
    rois = torch.randn(6, 64, 7, 7)
    for train in (False, True):
        pretrain.train(train), detector.train(train)
        with torch.no_grad():
            expected, actual = pretrain.online_network.backbone(images), detector.backbone(images)
            for level in expected:
                torch.testing.assert_close(actual[level], expected[level], atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(detector.roi_heads.box_head(rois), pretrain.online_network.box_head(rois),
                                       atol=2e-4, rtol=1e-4)
    pretrain.eval()


def test_drop_leaves_parts_to_the_detector(soco_demo, tmp_path):
    """--drop box_head (backbone + FPN) and --drop fpn,box_head (backbone only) for SoCo's alignment ablation."""
    _, path = soco_demo
    model_state = finetune_model(DEMO_FINETUNE).state_dict()
    for drop, kept_scopes in ((("box_head",), {"backbone.bottom_up.", "backbone.fpn"}),
                              (("fpn", "box_head"), {"backbone.bottom_up."})):
        conversion, new = convert_checkpoint(path, str(tmp_path / f"{'_'.join(drop)}.pkl"), "d2-fpn",
                                             model_state_dict=model_state, drop=drop)
        scopes = {"backbone.bottom_up." if n.startswith("backbone.bottom_up.") else
                  "backbone.fpn" if n.startswith("backbone.") else n.split(".")[0] for n in conversion.state_dict}
        assert scopes == kept_scopes
        assert any(n.startswith("roi_heads.box_head.") for n in new)
        assert any(why.endswith("--drop box_head") for _, why in conversion.new_modules)
    # --drop stem: every ResNet tensor but the stem's; the detector draws the stem anew, the rest loads unchanged.
    full, _ = convert_checkpoint(path, str(tmp_path / "full.pkl"), "d2-fpn", model_state_dict=model_state)
    conversion, new = convert_checkpoint(path, str(tmp_path / "nostem.pkl"), "d2-fpn", model_state_dict=model_state,
                                         drop=("stem", "fpn", "box_head"))
    stem = {n for n in full.state_dict if n.startswith("backbone.bottom_up.stem.")}
    assert stem and not stem & set(conversion.state_dict)
    assert set(conversion.state_dict) == {n for n in full.state_dict if n.startswith("backbone.bottom_up.")} - stem
    assert {n for n in new if n.startswith("backbone.bottom_up.")} == (
        {n for n in model_state if n.startswith("backbone.bottom_up.stem.")})
    for name, tensor in conversion.state_dict.items():
        torch.testing.assert_close(tensor, full.state_dict[name])
    assert any(why.endswith("--drop stem") for _, why in conversion.new_modules)
    with pytest.raises(CheckpointError, match="--drop"):
        convert_checkpoint(path, str(tmp_path / "x.pkl"), "d2-backbone", drop=("fpn",))
    with pytest.raises(CheckpointError, match="--drop takes"):
        convert_checkpoint(path, str(tmp_path / "x.pkl"), "d2-fpn", drop=("rpn",))
