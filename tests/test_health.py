"""Health monitors: spread and collapse values, view retrieval, and the hook's warnings, stop and resume."""
import json
import logging
import math
import types

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from objpretrain.config import get_pretrain_cfg
from objpretrain.engine.health import (
    INITIAL_WEIGHTS_FILE,
    HealthMonitorHook,
    TrainingCollapsedError,
    format_summary,
    weight_groups,
)
from objpretrain.evaluation.view_retrieval import (
    make_retrieval_views,
    reestimate_batchnorm,
    retrieval_top1,
    view_retrieval,
)
from objpretrain.modeling.contract import PretrainingModel
from objpretrain.modeling.health import HealthRecord, byol_collapse_loss, embedding_spread, info_nce_collapse_loss
from objpretrain.modeling.losses import BYOLLoss
from objpretrain.modeling.losses.infonce import InfoNCELoss

# ---- statistics ----

def test_spread_is_zero_and_cosine_one_when_every_embedding_is_the_same():
    spread, cosine = embedding_spread(torch.randn(1, 32).repeat(16, 1) * torch.rand(16, 1))
    assert spread == pytest.approx(0.0, abs=1e-5) and cosine == pytest.approx(1.0, abs=1e-5)


def test_spread_is_about_one_for_embeddings_spread_on_the_sphere():
    spread, cosine = embedding_spread(torch.randn(4096, 64, generator=torch.Generator().manual_seed(0)))
    assert spread == pytest.approx(1.0, abs=0.03) and abs(cosine) < 0.05


def test_byol_collapse_value_is_what_a_predictor_of_the_mean_target_scores():
    generator = torch.Generator().manual_seed(0)
    t1, t2 = torch.randn(32, 16, generator=generator) + 1, torch.randn(32, 16, generator=generator) + 1

    def mean_of(t):
        return nn.functional.normalize(nn.functional.normalize(t, dim=1).mean(0), dim=0).expand_as(t)

    constant = BYOLLoss()(mean_of(t2), t2, mean_of(t1), t1)
    assert float(byol_collapse_loss(t2, t1)) == pytest.approx(float(constant), rel=1e-5)
    # A predictor that follows its target scores below the collapse value.
    assert float(BYOLLoss()(t2 + 0.1 * t1, t2, t1 + 0.1 * t2, t1)) < float(byol_collapse_loss(t2, t1))


def test_info_nce_collapse_value_is_the_loss_of_equal_embeddings():
    queries = nn.functional.normalize(torch.ones(8, 4), dim=1)
    loss = InfoNCELoss(0.2)(queries, queries.clone(), queries[:1].repeat(31, 1))
    assert float(loss) == pytest.approx(info_nce_collapse_loss(31)) == pytest.approx(math.log(32))


def test_effective_rank_counts_the_directions_features_fill():
    """RankMe: about D for isotropic rows, 1 for rows on a line; a dimensional collapse to k directions gives about k
    while every row keeps its spread."""
    from objpretrain.modeling.health import effective_rank

    generator = torch.Generator().manual_seed(0)
    isotropic = torch.randn(2048, 16, generator=generator)
    assert 14 < effective_rank(isotropic) <= 16
    assert effective_rank(torch.randn(64, 1, generator=generator) * torch.randn(1, 16, generator=generator)) < 1.01
    collapsed = torch.randn(2048, 3, generator=generator) @ torch.randn(3, 16, generator=generator)
    assert 1.5 < effective_rank(collapsed) < 3.01
    assert embedding_spread(collapsed)[0] > 0.5  # the spread monitor does not see it


def test_health_record_detaches_its_embeddings():
    x = torch.randn(4, 3, requires_grad=True)
    record = HealthRecord(embeddings={"projector": x * 2})
    assert not record.embeddings["projector"].requires_grad


# ---- view retrieval ----

def test_retrieval_top1_finds_matching_rows_and_misses_shuffled_ones():
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert retrieval_top1(features, features + 0.01 * torch.randn(50, 8)) == 1.0
    assert retrieval_top1(features, features.roll(1, dims=0)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        retrieval_top1(features, features[:10])


def test_batchnorm_reestimation_gives_the_statistics_of_the_batches():
    norm = nn.BatchNorm1d(3)
    norm.running_mean.fill_(5.0)
    batches = [torch.randn(10, 3) * 2 + 1 for _ in range(4)]
    reestimate_batchnorm(norm, [lambda b=b: norm(b) for b in batches])
    assert not norm.training
    assert torch.allclose(norm.running_mean, torch.cat(batches).mean(0), atol=1e-5)
    assert norm.momentum == 0.1  # restored


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    from objpretrain.data.datasets.scenes import make_scene_coco

    root = tmp_path_factory.mktemp("retrieval")
    _, image_root = make_scene_coco(str(root), num_images=12, image_size=64, seed=5)
    return sorted(str(p) for p in root.glob("images/*.png"))


def test_retrieval_views_are_fixed_by_the_seed_and_differ_between_views(scene_files):
    a, b = make_retrieval_views(scene_files, 32, seed=0), make_retrieval_views(scene_files, 32, seed=0)
    other = make_retrieval_views(scene_files, 32, seed=1)
    assert a.view1.shape == (12, 3, 32, 32) and a.view1.dtype == torch.uint8 and a.chance == pytest.approx(1 / 12)
    assert torch.equal(a.view1, b.view1) and torch.equal(a.view2, b.view2)
    assert not torch.equal(a.view1, other.view1) and not torch.equal(a.view1, a.view2)


def test_retrieval_views_leave_out_an_unreadable_image_and_keep_the_others(scene_files, tmp_path, caplog):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        views = make_retrieval_views(scene_files[:3] + [str(broken)], 32, seed=0)
    assert len(views) == 3 and "broken.png" in caplog.text
    assert torch.equal(views.view1, make_retrieval_views(scene_files[:3], 32, seed=0).view1)
    with pytest.raises(ValueError, match="at least 2 readable"):
        make_retrieval_views([str(broken), scene_files[0]], 32)


def test_view_retrieval_scores_an_invariant_embedding_and_leaves_the_module_unchanged(scene_files):
    views = make_retrieval_views(scene_files, 32, seed=0, crop_scale=(1.0, 1.0), color_jitter=(0, 0, 0, 0),
                                 hflip_prob=0.0)  # both views the same pixels: any non-constant embedding finds them
    network = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    before = {k: v.clone() for k, v in network.state_dict().items()}
    score = view_retrieval(network, lambda m, x: m(x), views, lambda x: x.float() / 255)
    assert score == 1.0
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    constant = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).requires_grad_(False)
    constant[1].weight.zero_()
    constant[1].bias.fill_(1.0)
    assert view_retrieval(constant, lambda m, x: m(x), views, lambda x: x.float()) <= 2 * views.chance


# ---- the hook ----

class _FakeModel(PretrainingModel):
    """A pretraining model of the contract: online_network.backbone with ResNet stage names, its target (the
    "backbone" momentum pair), image_features at 32-px views and a health record the test sets."""

    view_size = 32

    def __init__(self):
        super().__init__()
        self.online_network = nn.Module()
        self.online_network.backbone = nn.ModuleDict({"stem": nn.Conv2d(3, 4, 3), "res2": nn.Conv2d(4, 4, 3)})
        self.online_network.projector = nn.Linear(4, 4)
        self.target_network = nn.Module()
        self.target_network.backbone = nn.ModuleDict({"stem": nn.Conv2d(3, 4, 3), "res2": nn.Conv2d(4, 4, 3)})
        self.target_network.load_state_dict({k: v for k, v in self.online_network.state_dict().items()
                                             if k.startswith("backbone")})
        self.record = None

    @property
    def device(self):
        return torch.device("cpu")

    def momentum_pairs(self):
        return {"backbone": (self.online_network.backbone, self.target_network.backbone)}

    def health_record(self):
        return self.record

    def normalize(self, x):
        return x.float() / 255

    def image_features(self, x):
        return self.online_network.backbone["res2"](self.online_network.backbone["stem"](x)).mean((2, 3))


def _hook(tmp_path, *opts, iteration=0):
    cfg = get_pretrain_cfg(None, ["OUTPUT_DIR", str(tmp_path), "OBJPRETRAIN.HEALTH.PERIOD", "1",
                                  "OBJPRETRAIN.HEALTH.PATIENCE", "3", *opts])
    hook = HealthMonitorHook(cfg)
    model = _FakeModel()
    hook.trainer = types.SimpleNamespace(model=model, iter=iteration, max_iter=100, storage=None)
    return hook, model


def _step(hook, storage, iteration, embeddings, losses=None):
    hook.trainer.iter = iteration
    hook.trainer.storage = storage
    for name, value in (losses or {}).items():
        storage.put_scalar(name, value)
    hook.trainer.model.record = HealthRecord(embeddings=embeddings, collapse_losses={"loss_x": 2.0})
    hook.after_step()


def test_weight_groups_are_the_resnet_stages_of_a_plain_and_an_fpn_backbone(repo_root):
    from detectron2.modeling import build_model

    from test_soco_model import tiny_cfg

    model = build_model(tiny_cfg(repo_root))
    groups = weight_groups(model.online_network)
    assert {"stem", "res2", "res3", "res4", "res5", "fpn", "box_head", "projector"} <= set(groups)
    assert all(p.ndim > 1 for params in groups.values() for _, p in params)


def test_hook_writes_spread_loss_ratio_movement_and_distance(tmp_path):
    hook, model = _hook(tmp_path)
    with EventStorage(0) as storage:
        hook.before_train()
        assert (tmp_path / INITIAL_WEIGHTS_FILE).exists()
        with torch.no_grad():
            model.online_network.backbone["stem"].weight.mul_(1.5)  # moves stem by exactly 50 %
        projections = torch.randn(64, 16)
        _step(hook, storage, 0, {"projector": projections * 3}, {"loss_x": 1.0})
        latest = {k: v for k, (v, _) in storage.latest().items()}
    assert latest["health/projector_norm"] == pytest.approx(3 * float(projections.norm(dim=1).mean()), rel=1e-5)
    assert latest["health/move_stem_since_start"] == pytest.approx(0.5, rel=1e-5)
    assert latest["health/move_res2_since_start"] == 0.0
    assert latest["health/loss_x_collapse_value"] == 2.0 and latest["health/loss_x_over_collapse"] == 0.5
    assert latest["health/projector_spread"] > 0.5
    # the target did not follow: its distance is the stem's 50 % step over the norm of the whole target backbone
    target = torch.cat([p.detach().flatten() for p in model.target_network.backbone.parameters()])
    expected = 0.5 * float(model.target_network.backbone["stem"].weight.norm()) / float(target.norm())
    assert latest["health/online_target_distance"] == pytest.approx(expected, rel=1e-4)


def test_a_lone_loss_is_compared_through_total_loss(tmp_path):
    """Detectron2 stores a model's losses one by one only when there are several."""
    hook, model = _hook(tmp_path)
    with EventStorage(0) as storage:
        hook.before_train()
        _step(hook, storage, 0, {"projector": torch.randn(8, 4)}, {"total_loss": 1.5})
        assert storage.latest()["health/loss_x_over_collapse"][0] == pytest.approx(0.75)


def test_hook_warns_naming_the_monitor_and_iteration_then_stops_when_asked(tmp_path, caplog):
    hook, model = _hook(tmp_path / "warn", "OBJPRETRAIN.HEALTH.MIN_MOVEMENT", "0.0")
    collapsed = {"predictor": torch.ones(16, 8) + 1e-4 * torch.randn(16, 8)}
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING):
        hook.before_train()
        for iteration in range(4):
            _step(hook, storage, iteration, collapsed)
    messages = [r.getMessage() for r in caplog.records if "Health" in r.getMessage()]
    assert len(messages) == 1  # once, when the third period in a row is collapsed
    assert "health/predictor_cosine_to_mean at iteration 3" in messages[0] and "collapsed" in messages[0]

    hook, model = _hook(tmp_path / "stop", "OBJPRETRAIN.HEALTH.STOP_ON_COLLAPSE", "True")
    with EventStorage(0) as storage:
        hook.before_train()
        _step(hook, storage, 0, {"predictor": torch.randn(16, 8)})  # spread, but the backbone never moves
        _step(hook, storage, 1, {"predictor": torch.randn(16, 8)})
        with pytest.raises(TrainingCollapsedError, match="move_stem_last_period at iteration 3.*not moving"):
            _step(hook, storage, 2, {"predictor": torch.randn(16, 8)})


def test_healthy_runs_do_not_warn(tmp_path, caplog):
    hook, model = _hook(tmp_path, "OBJPRETRAIN.HEALTH.STOP_ON_COLLAPSE", "True")
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING):
        hook.before_train()
        for iteration in range(6):
            with torch.no_grad():
                for p in model.online_network.parameters():
                    p.mul_(1.01)
            _step(hook, storage, iteration, {"predictor": torch.randn(16, 8)})
    assert not [r for r in caplog.records if "Health" in r.getMessage()]


def test_a_resumed_hook_measures_movement_from_the_first_run_initial_weights(tmp_path):
    hook, model = _hook(tmp_path)
    with EventStorage(0) as storage:
        hook.before_train()
        initial = model.online_network.backbone["stem"].weight.detach().clone()
        resumed, resumed_model = _hook(tmp_path, iteration=10)
        with torch.no_grad():
            resumed_model.online_network.backbone["stem"].weight.copy_(2 * initial)
        resumed.before_train()
        _step(resumed, storage, 10, {"projector": torch.randn(8, 4)})
        assert storage.latest()["health/move_stem_since_start"][0] == pytest.approx(1.0, rel=1e-5)
        assert storage.latest()["health/move_stem_last_period"][0] == pytest.approx(0.0, abs=1e-6)


def test_hook_measures_retrieval_at_start_and_every_period(tmp_path, scene_files):
    from detectron2.data import DatasetCatalog

    name = "health_retrieval_test"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: [{"file_name": f} for f in scene_files])
    # RETRIEVAL_SIZE 0: the views are rendered at the model's view_size (32 px).
    hook, model = _hook(tmp_path, "OBJPRETRAIN.HEALTH.RETRIEVAL_PERIOD", "2", "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET",
                        name)
    with EventStorage(0) as storage:
        hook.before_train()
        assert hook._views.view1.shape[-1] == 32
        assert 0 <= hook.initial_retrieval <= 1
        _step(hook, storage, 0, {"projector": torch.randn(8, 4)})
        assert "health/view_retrieval" not in storage.latest()
        _step(hook, storage, 1, {"projector": torch.randn(8, 4)})
        latest = storage.latest()
    assert latest["health/view_retrieval_initial"][0] == hook.initial_retrieval
    assert latest["health/view_retrieval"][0] == pytest.approx(hook.initial_retrieval)  # weights unchanged
    assert 1 <= hook.initial_rank <= 2 * 12  # 12 images, two views each
    assert latest["health/feature_rank_initial"][0] == hook.initial_rank
    assert latest["health/feature_rank"][0] == pytest.approx(hook.initial_rank)
    assert hook.state_dict() == {"initial_retrieval": hook.initial_retrieval, "initial_rank": hook.initial_rank}
    hook.after_train()
    with open(tmp_path / "health_summary.json") as f:
        summary = json.load(f)
    assert summary["view_retrieval_dataset"] == name and summary["view_retrieval_chance"] == pytest.approx(1 / 12)
    line = format_summary(summary)
    assert f"view retrieval on {name}" in line and "initial weights" in line and "move_stem_since_start" in line
    assert "effective rank of the image features" in line
    assert "loss_x 0.75 x its collapse value 2.000" in format_summary({"loss_x_over_collapse": 0.75,
                                                                         "loss_x_collapse_value": 2.0})
