"""SoCo meta-architectures: scale-aware RoIAlign, BYOL loss, view pairing, parameter names, EMA update."""
import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from torch import nn

import objpretrain  # noqa: F401  (registers SoCo / SoCoC4)
from objpretrain.config import ConfigError, get_pretrain_cfg
from objpretrain.config_validation import validate_config
from objpretrain.engine.momentum import ema_update
from objpretrain.modeling.losses import BYOLLoss, byol_loss, byol_pair_loss
from objpretrain.modeling.scale_aware_pooler import ScaleAwareROIPooler, assign_boxes_to_scale_bands

DEMO_CONFIG = "configs/demo/soco_r18_fpn_demo.yaml"

# The demo architecture, narrowed further so that a test step takes a fraction of a second on a CPU.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.SOCO.PROJECTOR_HIDDEN_DIM", "64",
    "MODEL.SOCO.PROJECTOR_OUT_DIM", "32",
    "MODEL.SOCO.PREDICTOR_HIDDEN_DIM", "64",
    "INPUT.SOCO.VIEW_SIZE", "32",
    "INPUT.SOCO.V3_SIZE", "16",
]


def tiny_cfg(repo_root, *opts, config=DEMO_CONFIG):
    import os

    return get_pretrain_cfg(os.path.join(repo_root, config), TINY_OPTS + list(opts))


def make_soco_batch(num_images=2, num_boxes=3, sizes=(32, 32, 16), names=("v1", "v2", "v3"), seed=0):
    """Mapper-format dicts with random pixels and random boxes inside each view."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for index in range(num_images):
        views, boxes = [], []
        for size in sizes:
            views.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator))
            corner = torch.rand(num_boxes, 2, generator=generator) * size * 0.5
            extent = torch.rand(num_boxes, 2, generator=generator) * size * 0.4 + size * 0.1
            boxes.append(torch.cat([corner, corner + extent], dim=1))
        batch.append(
            {"image_id": f"image_{index}", "file_name": f"image_{index}.png", "views": views, "boxes": boxes,
             "view_names": list(names)}
        )
    return batch


# ---- scale-aware assignment (SoCo §3.3) ----

def _square(side):
    return [0.0, 0.0, side, side]


def test_scale_bands_put_boxes_just_below_and_above_each_edge_on_the_right_level():
    sides = [10, 47.9, 48.1, 95.9, 96.1, 191.9, 192.1, 224]
    levels = assign_boxes_to_scale_bands([Boxes(torch.tensor([_square(s) for s in sides]))], [48, 96, 192])
    assert levels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # P2 P2 P3 P3 P4 P4 P5 P5


def test_scale_bands_use_area_not_side_length():
    # 40 x 80 has area 3200 > 48² = 2304 although its short side is below 48: P3.
    levels = assign_boxes_to_scale_bands([Boxes(torch.tensor([[0.0, 0.0, 40.0, 80.0]]))], [48, 96, 192])
    assert levels.tolist() == [1]


def test_scale_aware_pooler_reads_each_box_from_its_band_level():
    pooler = ScaleAwareROIPooler(2, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignV2", [48, 96, 192])
    # Each level is filled with its own index, so the pooled value says which level a box was read from.
    features = [torch.full((2, 1, 256 // stride, 256 // stride), float(level))
                for level, stride in enumerate([4, 8, 16, 32])]
    boxes = [Boxes(torch.tensor([_square(47.9), _square(95.9)])), Boxes(torch.tensor([_square(96.1), _square(200)]))]
    pooled = pooler(features, boxes)
    assert pooled.shape == (4, 1, 2, 2)
    assert pooled.mean(dim=(1, 2, 3)).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_scale_aware_pooler_equals_detectron2s_per_level_pooling_of_the_same_assignment():
    """The sorted, one-sync pooling equals RoIAlign of each box on its level, box by box, on random features and
    boxes (levels left empty included), and keeps the input order."""
    from detectron2.modeling.poolers import convert_boxes_to_pooler_format

    torch.manual_seed(0)
    pooler = ScaleAwareROIPooler(3, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignV2", [48, 96, 192])
    features = [torch.randn(2, 4, 256 // stride, 256 // stride) for stride in (4, 8, 16, 32)]
    for sides in ([10.0, 60.0, 30.0, 250.0, 100.0], [20.0, 30.0, 40.0, 10.0, 5.0]):  # all levels; P2 alone
        corners = torch.rand(len(sides), 2) * 4
        boxes = [Boxes(torch.cat([corners[:3], corners[:3] + torch.tensor(sides[:3])[:, None]], 1)),
                 Boxes(torch.cat([corners[3:], corners[3:] + torch.tensor(sides[3:])[:, None]], 1))]
        levels = assign_boxes_to_scale_bands(boxes, [48, 96, 192])
        rois = convert_boxes_to_pooler_format(boxes)
        expected = torch.stack([pooler.level_poolers[int(level)](features[int(level)], roi[None])[0]
                                for roi, level in zip(rois, levels)])
        torch.testing.assert_close(pooler(features, boxes), expected)
    assert pooler(features, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]).shape == (0, 4, 3, 3)
    # every level stays in the graph, boxes or not (DDP needs a gradient for every FPN parameter)
    features = [f.requires_grad_() for f in features]
    pooler(features, [Boxes(torch.tensor([_square(10.0)])), Boxes(torch.tensor([_square(20.0)]))]).sum().backward()
    assert all(f.grad is not None for f in features)


def test_scale_aware_pooler_rejects_thresholds_that_do_not_fit_the_levels():
    with pytest.raises(ValueError, match="SCALE_AWARE_THRESHOLDS"):
        ScaleAwareROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignV2", [48, 96])
    with pytest.raises(ValueError, match="increasing"):
        ScaleAwareROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignV2", [96, 48, 192])


# ---- BYOL loss (SoCo §3.3, Eq. 5-6) ----

def test_byol_loss_is_zero_for_identical_directions_and_matches_hand_computation():
    prediction = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    expected = torch.tensor([0.0, 2 - 2 / math.sqrt(2), 4.0])
    assert torch.allclose(byol_loss(prediction, target), expected, atol=1e-6)
    assert torch.allclose(byol_loss(target, target), torch.zeros(3), atol=1e-6)


def test_symmetrized_loss_averages_each_direction_over_objects_and_stops_target_gradients():
    pred_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    proj_b = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    pred_b = torch.tensor([[0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    proj_a = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    loss = BYOLLoss()(pred_a, proj_b, pred_b, proj_a)
    # (0 + 2) / 2 + (0 + (2 - sqrt 2)) / 2
    assert loss.item() == pytest.approx(1 + (2 - math.sqrt(2)) / 2, abs=1e-6)
    loss.backward()
    assert proj_a.grad is None and proj_b.grad is None
    assert pred_a.grad is not None


def test_pair_loss_weights_a_repeated_proposal_by_its_pairs_per_image():
    """REPEATED_BOX_WEIGHTING "pairs" (the official correspondence matrix): rows [a, a, a, b] weigh a : b as 9 : 1 and
    each image counts once; with distinct ids it equals the mean over rows."""
    prediction = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] + [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] + [[1.0, 0.0]] * 4)
    repeated = torch.tensor([0, 0, 0, 1])
    distinct = torch.arange(4)
    ids = torch.stack([repeated, distinct])
    per_image = byol_pair_loss(prediction, target, ids[:, :, None] == ids[:, None, :])
    # image 0: 9 pairs of a at loss 0, 1 pair of b at loss 2 (orthogonal) -> 0.2; image 1: rows 0, 2 at 0, 1, 3 at 2
    assert per_image.tolist() == pytest.approx([0.2, 1.0])
    identity = torch.eye(4, dtype=torch.bool).expand(2, 4, 4)
    assert byol_pair_loss(prediction, target, identity).mean().item() == pytest.approx(
        byol_loss(prediction, target).mean().item())
    rows = BYOLLoss()(prediction, target, target, prediction)
    assert BYOLLoss()(prediction, target, target, prediction, identity).item() == pytest.approx(rows.item())


def test_byol_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        byol_loss(torch.zeros(3, 4), torch.zeros(2, 4))


# ---- the SoCo model ----

@pytest.fixture(scope="module")
def tiny_soco(repo_root):
    torch.manual_seed(0)
    return build_model(tiny_cfg(repo_root))


def test_soco_returns_one_symmetrized_loss_per_view_paired_with_v1(tiny_soco):
    losses = tiny_soco(make_soco_batch())
    assert sorted(losses) == ["loss_v1_v2", "loss_v1_v3"]
    for value in losses.values():
        assert value.ndim == 0 and 0 <= value.item() <= 8  # two BYOL terms, each in [0, 4]


def test_soco_loss_compares_the_same_object_across_views(tiny_soco):
    """With the predictor removed and the target equal to the online network (as at initialization), views
    that are pixel-identical with the same boxes give a zero loss; shuffling the boxes of one view does not."""
    model = tiny_soco
    predictor = model.predictor
    model.predictor = nn.Identity()
    try:
        batch = make_soco_batch(sizes=(32, 32), names=("v1", "v2"))
        for x in batch:
            x["views"][1] = x["views"][0].clone()
            x["boxes"][1] = x["boxes"][0].clone()
        assert model(batch)["loss_v1_v2"].item() == pytest.approx(0.0, abs=1e-4)
        for x in batch:
            x["boxes"][1] = x["boxes"][1].roll(1, dims=0)
        assert model(batch)["loss_v1_v2"].item() > 1e-2
    finally:
        model.predictor = predictor


def test_soco_loss_equals_hand_computation_from_network_outputs(tiny_soco):
    model = tiny_soco
    batch = make_soco_batch(sizes=(32, 16), names=("v1", "v3"), seed=3)
    losses = model(batch)
    with torch.no_grad():
        outputs = {}
        for index, name in enumerate(["v1", "v3"]):
            images, boxes = model._prepare_view(batch, index)
            outputs[name] = (model.predictor(model.online_network(images, boxes)), model.target_network(images, boxes))

    def term(p, z):
        return (2 - 2 * torch.nn.functional.cosine_similarity(p, z, dim=1)).mean()

    expected = term(outputs["v1"][0], outputs["v3"][1]) + term(outputs["v3"][0], outputs["v1"][1])
    assert losses["loss_v1_v3"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_soco_star_adds_the_v4_pair(tiny_soco):
    batch = make_soco_batch(sizes=(32, 32, 16, 24), names=("v1", "v2", "v3", "v4"))
    assert sorted(tiny_soco(batch)) == ["loss_v1_v2", "loss_v1_v3", "loss_v1_v4"]


def test_soco_rejects_inconsistent_boxes_naming_the_image(tiny_soco):
    batch = make_soco_batch()
    batch[1]["boxes"][1] = batch[1]["boxes"][1][:2]
    with pytest.raises(ValueError, match="image_1"):
        tiny_soco(batch)
    batch = make_soco_batch()
    batch[1]["view_names"] = ["v1", "v2"]
    with pytest.raises(ValueError, match="image_1"):
        tiny_soco(batch)


def test_a_view_with_its_own_proposals_pairs_with_its_own_v1_boxes(tiny_soco):
    """v1_boxes["v3"] (INPUT.SOCO.OWN_PROPOSAL_VIEWS): the pair (V1, V3) compares V3's rows with those V1 boxes,
    the pair (V1, V2) with boxes[0]: in eval mode (BatchNorm per row) each loss equals that of a batch holding only
    that pair."""
    model = tiny_soco.eval()
    try:
        batch = make_soco_batch(names=("v1", "v2", "v3"), seed=5)
        own_v1 = make_soco_batch(sizes=(32,), names=("v1",), seed=6)
        for x, other in zip(batch, own_v1):
            x["v1_boxes"] = {"v3": other["boxes"][0]}
        losses = model(batch)
        only_v3 = [{**x, "views": [x["views"][0], x["views"][2]], "boxes": [x["v1_boxes"]["v3"], x["boxes"][2]],
                    "view_names": ["v1", "v3"], "v1_boxes": {}} for x in batch]
        only_v2 = [{**x, "views": x["views"][:2], "boxes": x["boxes"][:2], "view_names": ["v1", "v2"],
                    "v1_boxes": {}} for x in batch]
        assert losses["loss_v1_v3"].item() == pytest.approx(model(only_v3)["loss_v1_v3"].item(), rel=1e-5)
        assert losses["loss_v1_v2"].item() == pytest.approx(model(only_v2)["loss_v1_v2"].item(), rel=1e-5)
        shared = [{**x, "v1_boxes": {}} for x in batch]  # V1's boxes[0] for V3 too: another loss
        assert model(shared)["loss_v1_v3"].item() != pytest.approx(losses["loss_v1_v3"].item(), rel=1e-3)
        batch[1]["v1_boxes"] = {"v3": batch[1]["v1_boxes"]["v3"][:2]}
        with pytest.raises(ValueError, match="image_1"):
            model(batch)
    finally:
        model.train()


def test_views_batched_per_size_compute_what_per_view_calls_compute(repo_root):
    """MODEL.SOCO.VIEW_BATCHING "per_size" (V1 and V2 in one call, V3 in another): with BatchNorm on its running
    statistics the losses and every gradient equal per-view calls' to fp32 rounding, so the batching itself is exact;
    in training mode BatchNorm then normalizes over the group, which changes the losses (measured here: by 1-10 %
    on this tiny model), as the key says."""
    batch = make_soco_batch(sizes=(32, 32, 16), names=("v1", "v2", "v3"), seed=9)
    own = make_soco_batch(sizes=(32,), names=("v1",), seed=10)
    for x, other in zip(batch, own):
        x["v1_boxes"] = {"v3": other["boxes"][0]}  # V1 with two blocks of boxes, as the official recipe has
    results = {}
    for batching in ("per_view", "per_size"):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(repo_root, "MODEL.SOCO.VIEW_BATCHING", batching))
        assert len(model._view_groups(batch, ["v1", "v2", "v3"])) == (3 if batching == "per_view" else 2)
        for mode in ("eval", "train"):
            getattr(model, mode)()
            model.zero_grad()
            losses = model(batch)
            sum(losses.values()).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[batching, mode] = ({k: v.item() for k, v in losses.items()}, grads)
    (eval_view, grads_view), (eval_size, grads_size) = results["per_view", "eval"], results["per_size", "eval"]
    assert eval_size == pytest.approx(eval_view, rel=1e-5)
    assert grads_size.keys() == grads_view.keys()
    for name in grads_view:
        torch.testing.assert_close(grads_size[name], grads_view[name], rtol=1e-3, atol=1e-6, msg=name)
    train_view, train_size = results["per_view", "train"][0], results["per_size", "train"][0]
    assert train_size != pytest.approx(train_view, rel=1e-4)
    assert train_size == pytest.approx(train_view, rel=0.2)
    with pytest.raises(ConfigError, match="VIEW_BATCHING"):
        validate_config(tiny_cfg(repo_root, "MODEL.SOCO.VIEW_BATCHING", "all"))


def test_pairs_weighting_uses_the_box_ids(repo_root):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root, "MODEL.SOCO.REPEATED_BOX_WEIGHTING", "pairs")).eval()
    rows_model = build_model(tiny_cfg(repo_root)).eval()
    rows_model.load_state_dict(model.state_dict())
    batch = make_soco_batch(names=("v1", "v2", "v3"), seed=7)
    with pytest.raises(ValueError, match="box_ids"):
        model(batch)
    for x in batch:
        x["box_ids"] = [torch.arange(3)] * 3
    distinct = model(batch)
    assert distinct["loss_v1_v2"].item() == pytest.approx(rows_model(batch)["loss_v1_v2"].item(), rel=1e-5)
    for x in batch:  # rows 0 and 1 are one proposal (the mapper repeats boxes so): their 4 pairs count
        x["box_ids"] = [torch.tensor([0, 0, 1])] * 3
        x["boxes"] = [torch.stack([b[0], b[0], b[2]]) for b in x["boxes"]]
    assert model(batch)["loss_v1_v2"].item() != pytest.approx(rows_model(batch)["loss_v1_v2"].item(), rel=1e-3)
    with pytest.raises(ConfigError, match="REPEATED_BOX_WEIGHTING"):
        validate_config(tiny_cfg(repo_root, "MODEL.SOCO.REPEATED_BOX_WEIGHTING", "objects"))


def test_soco_parameter_names_match_detectron2_and_the_target_mirrors_the_online_network(repo_root, tiny_soco):
    """Names as docs/design.md fixes them, and the demo pretraining model's backbone and box head have exactly
    the keys and shapes of the demo finetuning detector's (so the converted checkpoint loads completely)."""
    params = dict(tiny_soco.named_parameters())
    online = {k[len("online_network."):]: v for k, v in params.items() if k.startswith("online_network.")}
    target = {k[len("target_network."):]: v for k, v in params.items() if k.startswith("target_network.")}
    assert set(online) == set(target)
    assert {k.split(".")[0] for k in online} == {"backbone", "box_head", "projector"}
    assert {k.split(".")[0] for k in params} == {"online_network", "target_network", "predictor"}
    assert all(v.requires_grad for v in online.values()) and not any(v.requires_grad for v in target.values())

    fresh = build_model(tiny_cfg(repo_root))
    assert all(torch.equal(p, dict(fresh.target_network.named_parameters())[k])
               for k, p in fresh.online_network.named_parameters())

    import os

    soco = build_model(get_pretrain_cfg(os.path.join(repo_root, DEMO_CONFIG)))
    detector = build_model(get_pretrain_cfg(os.path.join(repo_root, "configs/demo/finetune_trees_r18_fpn.yaml")))
    d2_state = detector.state_dict()
    soco_state = soco.online_network.state_dict()
    renamed = {("roi_heads." + k if k.startswith("box_head.") else k): v for k, v in soco_state.items()
               if not k.startswith("projector.")}
    missing = [k for k in renamed if k not in d2_state or d2_state[k].shape != renamed[k].shape]
    assert not missing, f"SoCo keys with no counterpart in Detectron2's Mask R-CNN: {missing[:5]}"
    expected = [k for k in d2_state if k.startswith(("backbone.", "roi_heads.box_head."))]
    assert sorted(renamed) == sorted(expected)


def test_ema_of_the_momentum_pairs_moves_every_target_parameter_by_the_ema_formula(repo_root):
    model = build_model(tiny_cfg(repo_root))
    with torch.no_grad():
        for p in model.online_network.parameters():
            p.add_(torch.randn_like(p))
    online = {k: p.clone() for k, p in model.online_network.named_parameters()}
    before = {k: p.clone() for k, p in model.target_network.named_parameters()}
    for foreach in (True, False):  # the multi-tensor lerp and the per-parameter loop
        with torch.no_grad():
            for name, p in model.target_network.named_parameters():
                p.copy_(before[name])
        ema_update(model.momentum_pairs().values(), 0.9, foreach=foreach)
        for name, p in model.target_network.named_parameters():
            assert torch.allclose(p, 0.9 * before[name] + 0.1 * online[name], atol=1e-6), (name, foreach)
    assert model.momentum_base == 0.99 and model.momentum_end == 1.0


def test_soco_c4_names_match_res5_roi_heads_and_it_trains(repo_root):
    cfg = tiny_cfg(repo_root, "MODEL.META_ARCHITECTURE", "SoCoC4", "MODEL.BACKBONE.NAME", "build_resnet_backbone",
                   "MODEL.RESNETS.OUT_FEATURES", "['res4']", "MODEL.SOCO.IN_FEATURES", "['res4']",
                   "MODEL.SOCO.POOLER_RESOLUTION", "6", "MODEL.ROI_HEADS.NAME", "Res5ROIHeads",
                   "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "6")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert {k.split(".")[0] for k, _ in model.online_network.named_children()} >= {"backbone", "res5", "projector"}
    detector_cfg = cfg.clone()
    detector_cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"])
    detector = build_model(detector_cfg)
    d2_state = detector.state_dict()
    renamed = {("roi_heads." + k if k.startswith("res5.") else k): v
               for k, v in model.online_network.state_dict().items() if not k.startswith("projector.")}
    assert sorted(renamed) == sorted(k for k in d2_state if k.startswith(("backbone.", "roi_heads.res5.")))
    assert all(d2_state[k].shape == v.shape for k, v in renamed.items())

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    batch = make_soco_batch(sizes=(32, 32), names=("v1", "v2"))
    losses = []
    for _ in range(3):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(model.momentum_pairs().values(), 0.99)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert model.online_network.res5[0].conv1.weight.grad.abs().sum() > 0


# ---- V3 without padding (objpretrain/modeling/any_size_fpn.py) ----

def test_any_size_fpn_equals_detectron2_fpn_on_divisible_sizes_and_keeps_its_names(repo_root):
    from detectron2.modeling import build_backbone

    torch.manual_seed(0)
    cfg = tiny_cfg(repo_root)
    ours = build_backbone(cfg).eval()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    detectron2 = build_backbone(cfg).eval()
    assert list(ours.state_dict()) == list(detectron2.state_dict())
    detectron2.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = detectron2(x), ours(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    assert ours.size_divisibility == 0 and detectron2.size_divisibility == 32


def test_v3_is_not_padded_and_no_padding_reaches_a_batchnorm(repo_root):
    """A 112 px V3 (not a multiple of 32) goes through the backbone as its own 112 px (the batch tensor is the
    normalized views, nothing added), every level upsamples to its lateral's size, and the stem's BatchNorm sees
    56 x 56 maps (padding to 128 would give 64 x 64)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root, "INPUT.SOCO.VIEW_SIZE", "224", "INPUT.SOCO.V3_SIZE", "112")).train()
    batch = make_soco_batch(sizes=(224, 224, 112))
    images, _ = model._prepare_view(batch, 2)
    assert images.shape[-2:] == (112, 112)
    backbone = model.online_network.backbone
    torch.testing.assert_close(images, torch.stack([model.normalize(d["views"][2]) for d in batch]))
    seen = []
    handle = backbone.bottom_up.stem.conv1.norm.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape[-2:]))
    try:
        with torch.no_grad():
            features = backbone(images)
    finally:
        handle.remove()
    assert seen == [(56, 56)]
    assert {name: tuple(f.shape[-2:]) for name, f in features.items()} == {
        "p2": (28, 28), "p3": (14, 14), "p4": (7, 7), "p5": (4, 4), "p6": (2, 2)}
    # Detectron2's FPN would fail here: p5 (4 x 4) upsampled by 2 does not match p4's lateral (7 x 7).
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("config", [DEMO_CONFIG, "configs/demo/soco_r18_c4_demo.yaml",
                                    "configs/demo/oac_moco_r18_demo.yaml"])
def test_zero_init_residual_zeroes_the_last_gamma_of_every_block_online_and_target(repo_root, config):
    """MODEL.RESNETS.ZERO_INIT_RESIDUAL (official SoCo ResNet): the last norm of each residual branch starts at
    gamma 0 (conv2 of basic blocks, conv3 of bottlenecks such as SoCo-C4's res5), in the target copy too; off,
    Detectron2's gamma 1 stays."""
    import os

    from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

    def last_gammas(network):
        return [getattr(block, "conv2" if isinstance(block, BasicBlock) else "conv3").norm.weight
                for block in network.modules() if isinstance(block, (BasicBlock, BottleneckBlock))]

    opts = ["MODEL.DEVICE", "cpu", "MODEL.OAC.QUEUE_SIZE", "16"]
    path = os.path.join(repo_root, config)
    zeroed = build_model(get_pretrain_cfg(path, opts + ["MODEL.RESNETS.ZERO_INIT_RESIDUAL", "True"]))
    default = build_model(get_pretrain_cfg(path, opts))
    for network in (zeroed.online_network, zeroed.target_network):
        gammas = last_gammas(network)
        assert len(gammas) >= 8 and all(torch.all(g == 0) for g in gammas)
    assert all(torch.all(g == 1) for g in last_gammas(default.online_network))
    if "c4" in config:
        assert any(isinstance(b, BottleneckBlock) for b in zeroed.online_network.res5.modules())
    # Only those: the first norm of every block keeps gamma 1.
    blocks = [b for b in zeroed.online_network.modules() if isinstance(b, (BasicBlock, BottleneckBlock))]
    assert all(torch.all(b.conv1.norm.weight == 1) for b in blocks)


def test_projector_output_norm_centres_online_and_target_projections(repo_root):
    """MODEL.SOCO.PROJECTOR_OUTPUT_NORM "BN" (SimSiam's output BN, used by the learning regime): in training each
    projection dimension has mean 0 and variance 1 over the batch, in the target copy too, and it has no affine
    parameters; the default "" (the paper) has no such layer, and an unknown value is refused."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root, "MODEL.SOCO.PROJECTOR_OUTPUT_NORM", "BN"))
    features = torch.randn(64, model.online_network.projector.in_dim) + 3.0  # a large common component
    for network in (model.online_network, model.target_network):
        projections = network.projector.train()(features)
        assert projections.mean(dim=0).abs().max() < 1e-5
        assert torch.allclose(projections.var(dim=0, unbiased=False), torch.ones(projections.shape[1]), atol=1e-3)
        assert not any(p.requires_grad for p in network.projector.output_norm.parameters())
    assert len(list(model.online_network.projector.output_norm.parameters())) == 0
    losses = model(make_soco_batch())
    assert all(torch.isfinite(v) for v in losses.values())

    default = build_model(tiny_cfg(repo_root))
    assert not hasattr(default.online_network.projector, "output_norm")
    with pytest.raises(ValueError, match="Unknown output norm 'LN'"):
        build_model(tiny_cfg(repo_root, "MODEL.SOCO.PROJECTOR_OUTPUT_NORM", "LN"))
