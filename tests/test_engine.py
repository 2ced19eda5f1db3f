"""Engine: LARS, the momentum-target hook, lr scaling / schedule, non-finite loss guard, atomic checkpoints."""
import itertools
import math
import os
import types

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.solver import get_default_optimizer_params
from detectron2.utils.events import EventStorage
from torch import nn

from objpretrain.config import ConfigError, get_pretrain_cfg
from objpretrain.config_validation import validate_config
from objpretrain.engine import (
    LARS,
    AtomicDetectionCheckpointer,
    MomentumTargetHook,
    PretrainSimpleTrainer,
    PretrainTrainer,
    build_pretrain_optimizer,
    cosine_momentum,
    ema_update,
    resolve_schedule,
    scaled_base_lr,
)
from objpretrain.modeling.contract import PretrainingModel
from test_soco_model import make_soco_batch, tiny_cfg


def solver_cfg(*opts):
    return get_pretrain_cfg(None, ["MODEL.DEVICE", "cpu"] + list(opts))


# ---- momentum schedule and hook (BYOL §3.1, SoCo §4.1) ----

def test_cosine_momentum_end_points_and_midpoint():
    assert cosine_momentum(0, 1000, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(1000, 1000, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(500, 1000, 0.99) == pytest.approx(0.995)
    values = [cosine_momentum(k, 100, 0.99) for k in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


class _TwoLinearModel(PretrainingModel):
    """The smallest model of the contract with a target network: one online and one target Linear."""

    momentum_base, momentum_end = 0.99, 1.0

    def __init__(self):
        super().__init__()
        self.online, self.target = nn.Linear(3, 2), nn.Linear(3, 2).requires_grad_(False)
        with torch.no_grad():
            self.target.weight.zero_()
            self.target.bias.zero_()
            self.online.weight.fill_(1.0)
            self.online.bias.fill_(1.0)

    def momentum_pairs(self):
        return {"head": (self.online, self.target)}

    device = torch.device("cpu")

    def normalize(self, images):
        return images.float()

    def image_features(self, images):
        return images.flatten(1)


def _hook_with_trainer(max_iter, model, storage):
    hook = MomentumTargetHook(max_iter)
    hook.trainer = types.SimpleNamespace(model=model, storage=storage)
    return hook


def test_momentum_hook_follows_the_schedule_and_resumes_from_its_state():
    with EventStorage(0) as storage:
        model = _TwoLinearModel()
        hook = _hook_with_trainer(4, model, storage)
        hook.before_train()
        hook.after_step()
        hook.after_step()
        state = hook.state_dict()
        resumed = _hook_with_trainer(4, model, storage)
        resumed.load_state_dict(state)
        resumed.after_step()
        resumed.after_step()
        # The target (0) moves towards the online module (1): after k updates it is 1 - prod(tau_i).
        expected = 1.0 - math.prod(cosine_momentum(k, 4, 0.99) for k in range(4))
        assert torch.allclose(model.target.weight, torch.full((2, 3), expected))
        assert torch.allclose(model.target.bias, torch.full((2,), expected))
        assert storage.history("momentum_tau").latest() == pytest.approx(cosine_momentum(3, 4, 0.99))


def test_ema_update_matches_parameters_by_name_with_or_without_foreach():
    online = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    for foreach in (True, False):
        target = nn.Sequential(nn.Linear(2, 2))  # the online module may hold more (BYOL's predictor)
        before = target[0].weight.detach().clone()
        ema_update([(online, target)], 0.75, foreach=foreach)
        assert torch.allclose(target[0].weight, 0.75 * before + 0.25 * online[0].weight)


def test_momentum_hook_refuses_a_model_without_a_target_network():
    hook = _hook_with_trainer(4, nn.Linear(1, 1), None)
    with pytest.raises(TypeError, match="momentum pairs"):
        hook.before_train()


# ---- LARS (SoCo §4.1) ----

def test_lars_adapts_weights_and_leaves_biases_and_norm_parameters_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-1, 1)
    cfg = solver_cfg("SOLVER.OPTIMIZER", "LARS", "SOLVER.BASE_LR", "0.5", "SOLVER.WEIGHT_DECAY", "0.1",
                     "SOLVER.MOMENTUM", "0.9", "SOLVER.LARS_TRUST_COEFFICIENT", "0.01")
    optimizer = build_pretrain_optimizer(cfg, model)
    assert isinstance(optimizer, LARS)
    excluded = {id(p) for g in optimizer.param_groups if g["lars_exclude"] for p in g["params"]}
    assert excluded == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups if g["lars_exclude"])

    grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name].clone()
    optimizer.step()

    w, g = before["0.weight"], grads["0.weight"]
    update = g + 0.1 * w
    trust = 0.01 * w.norm() / (update.norm() + 1e-8)
    assert torch.allclose(model[0].weight, w - 0.5 * trust * update, atol=1e-6)
    for name in ("0.bias", "1.weight", "1.bias"):  # plain momentum SGD, no decay, no trust ratio
        assert torch.allclose(dict(model.named_parameters())[name], before[name] - 0.5 * grads[name], atol=1e-6)

    optimizer.step()  # same gradients again: the momentum buffer is 0.9 * g + g
    assert torch.allclose(model[0].bias, before["0.bias"] - 0.5 * grads["0.bias"] * (1 + 1.9), atol=1e-6)


def test_lars_foreach_update_equals_the_per_parameter_loop():
    """LARS(foreach=True), the default: the same parameters and momentum buffers as the loop over parameters,
    over steps with weight decay, an excluded group, a zero-initialized weight and a parameter without gradient."""
    def run(foreach):
        torch.manual_seed(0)
        weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.zeros(5)),
                   torch.nn.Parameter(torch.randn(2, 2, 3, 3))]
        biases = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
        frozen = torch.nn.Parameter(torch.randn(3))
        optimizer = LARS([{"params": weights + [frozen]}, {"params": biases, "lars_exclude": True}], lr=0.5,
                         momentum=0.9, weight_decay=0.1, trust_coefficient=0.02, foreach=foreach)
        for step in range(4):
            for p in weights + biases:
                p.grad = torch.randn_like(p) * (step + 1)
            optimizer.step()
        return [p.detach().clone() for p in weights + biases + [frozen]], [
            optimizer.state[p]["momentum_buffer"] for p in weights + biases]

    (loop_params, loop_buffers), (foreach_params, foreach_buffers) = run(False), run(True)
    for a, b in zip(loop_params + loop_buffers, foreach_params + foreach_buffers):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(loop_params[1], torch.zeros(5))  # the zero-initialized weight moved


def test_lars_exclusion_covers_exactly_the_norm_and_bias_parameters_of_soco(repo_root):
    """The LARS split uses "1-D parameter" for "bias or norm parameter"; check that equals Detectron2's
    norm/bias grouping on the SoCo model, and that the target network is not optimized."""
    model = build_model(tiny_cfg(repo_root))
    groups = get_default_optimizer_params(model, base_lr=1.0, weight_decay=1.0, weight_decay_norm=0.0,
                                          weight_decay_bias=0.0)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    optimizer = build_pretrain_optimizer(tiny_cfg(repo_root, "SOLVER.OPTIMIZER", "LARS"), model)
    excluded = {id(p) for g in optimizer.param_groups if g["lars_exclude"] for p in g["params"]}
    assert excluded == no_decay
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.target_network.parameters()}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("optimizer_name", ["SGD", "LARS"])
def test_predictor_lr_factor_scales_exactly_the_predictor(repo_root, optimizer_name):
    model = build_model(tiny_cfg(repo_root))
    cfg = tiny_cfg(repo_root, "SOLVER.OPTIMIZER", optimizer_name, "SOLVER.PREDICTOR_LR_FACTOR", "10.0",
                   "SOLVER.BASE_LR", "0.5", "SOLVER.LR_SCALE_BATCH_SIZE", "0")
    optimizer = build_pretrain_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    predictor = {id(p) for p in model.predictor.parameters()}
    assert predictor and all(lr_of[i] == pytest.approx(5.0) for i in predictor)
    assert all(lr == pytest.approx(0.5) for i, lr in lr_of.items() if i not in predictor)
    assert set(lr_of) == {id(p) for p in model.parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="has no predictor"):
        build_pretrain_optimizer(solver_cfg("SOLVER.PREDICTOR_LR_FACTOR", "10.0"), nn.Linear(2, 2))


def test_optimizer_choice():
    model = nn.Linear(2, 2)
    assert isinstance(build_pretrain_optimizer(solver_cfg("SOLVER.OPTIMIZER", "SGD"), model), torch.optim.SGD)
    assert isinstance(build_pretrain_optimizer(solver_cfg("SOLVER.OPTIMIZER", "lars"), model), LARS)  # any case
    validate_config(solver_cfg("SOLVER.OPTIMIZER", "lars"))
    with pytest.raises(ConfigError, match="^SOLVER.OPTIMIZER is 'Adam'; allowed: 'LARS', 'SGD'$"):
        validate_config(solver_cfg("SOLVER.OPTIMIZER", "Adam"))


# ---- lr scaling and schedule (SoCo §4.1) ----

def test_linear_lr_scaling_rule():
    cfg = solver_cfg("SOLVER.BASE_LR", "1.0", "SOLVER.IMS_PER_BATCH", "2048", "SOLVER.LR_SCALE_BATCH_SIZE", "256")
    assert scaled_base_lr(cfg) == pytest.approx(8.0)
    cfg.SOLVER.LR_SCALE_BATCH_SIZE = 0
    assert scaled_base_lr(cfg) == pytest.approx(1.0)


def test_square_root_lr_scaling_rule():
    cfg = solver_cfg("SOLVER.BASE_LR", "0.05", "SOLVER.IMS_PER_BATCH", "256", "SOLVER.LR_SCALE_BATCH_SIZE", "32",
                     "SOLVER.LR_SCALING", "sqrt")
    assert scaled_base_lr(cfg) == pytest.approx(0.05 * 8 ** 0.5)
    cfg.SOLVER.LR_SCALING = "cubic"
    with pytest.raises(ConfigError, match="LR_SCALING"):
        validate_config(cfg)


def test_epochs_become_iterations_from_the_dataset_size():
    cfg = solver_cfg("SOLVER.EPOCHS", "100", "SOLVER.WARMUP_EPOCHS", "10", "SOLVER.IMS_PER_BATCH", "2048")
    cfg.freeze()
    resolved = resolve_schedule(cfg, num_images=1281167)
    assert (resolved.SOLVER.MAX_ITER, resolved.SOLVER.WARMUP_ITERS) == (62557, 6256)
    assert resolved.is_frozen() and cfg.SOLVER.MAX_ITER != 62557
    assert resolve_schedule(resolved, num_images=1281167).SOLVER.MAX_ITER == 62557
    with pytest.raises(ConfigError, match="WARMUP_EPOCHS is 1; is set but SOLVER.EPOCHS is not"):
        validate_config(solver_cfg("SOLVER.WARMUP_EPOCHS", "1"))


def test_warmup_longer_than_the_run_is_capped():
    resolved = resolve_schedule(solver_cfg("SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "30"))
    assert resolved.SOLVER.WARMUP_ITERS == 5


def _lrs_of_schedule(cfg, steps):
    """The lr of each of the first ``steps`` iterations under the config's optimizer and scheduler."""
    optimizer = build_pretrain_optimizer(cfg, nn.Linear(2, 2))
    scheduler = PretrainTrainer.build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_warms_up_linearly_then_follows_a_cosine(repo_root):
    cfg = get_pretrain_cfg(os.path.join(repo_root, "configs/demo/soco_r18_fpn_demo.yaml"), [
        "SOLVER.BASE_LR", "1.0", "SOLVER.IMS_PER_BATCH", "512", "SOLVER.LR_SCALE_BATCH_SIZE", "256",
        "SOLVER.MAX_ITER", "110", "SOLVER.WARMUP_ITERS", "10"])
    lrs = _lrs_of_schedule(cfg, 110)
    peak = 2.0  # 1.0 * 512 / 256
    assert lrs[0] == pytest.approx(0.0, abs=1e-9)
    assert lrs[5] == pytest.approx(peak / 2, rel=1e-3)
    assert lrs[10] == pytest.approx(peak, rel=1e-3)
    assert lrs[60] == pytest.approx(peak / 2, rel=1e-3)  # half-way through the 100 cosine iterations
    assert lrs[109] < 0.01 * peak


def test_warmup_can_start_at_a_hundredth_of_the_lr_as_the_official_soco(repo_root):
    """SOLVER.WARMUP_FACTOR (Detectron2's): 0 in the paper configs, 0.01 in the official SoCo schedule
    (warm-up from BASE_LR / 100); the scaled lr starts there and still reaches the peak at the warm-up's end."""
    cfg = get_pretrain_cfg(os.path.join(repo_root, "configs/demo/soco_r18_fpn_demo.yaml"), [
        "SOLVER.BASE_LR", "1.0", "SOLVER.IMS_PER_BATCH", "512", "SOLVER.LR_SCALE_BATCH_SIZE", "256",
        "SOLVER.MAX_ITER", "110", "SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.01"])
    lrs = _lrs_of_schedule(cfg, 11)
    assert lrs[0] == pytest.approx(2.0 / 100, rel=1e-6)
    assert lrs[5] == pytest.approx(2.0 * (0.01 + 0.99 * 0.5), rel=1e-3)
    assert lrs[10] == pytest.approx(2.0, rel=1e-3)


# ---- non-finite losses ----

class _LossModel(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.value = value

    def forward(self, data):
        return {"loss": self.weight.sum() * self.value}


def _guarded_trainer(value, policy):
    model = _LossModel(value)
    loader = itertools.repeat([{"image_id": "broken_7"}, {"image_id": "fine_8"}])
    return PretrainSimpleTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), policy)


def test_nonfinite_loss_raises_naming_the_batch_images():
    trainer = _guarded_trainer(float("nan"), "raise")
    with pytest.raises(FloatingPointError, match="broken_7"):
        trainer.train(0, 1)


def test_nonfinite_loss_steps_are_skipped_and_counted_under_the_skip_policy():
    trainer = _guarded_trainer(float("inf"), "skip")
    trainer.train(0, 3)
    assert trainer.model.weight.item() == 1.0
    assert trainer.num_skipped_steps == 3
    assert trainer.state_dict()["num_skipped_steps"] == 3
    finite = _guarded_trainer(1.0, "skip")
    finite.train(0, 1)
    assert finite.model.weight.item() == pytest.approx(0.9)


def test_unknown_nonfinite_policy_is_rejected():
    with pytest.raises(ValueError, match="NONFINITE_LOSS_POLICY"):
        _guarded_trainer(1.0, "ignore")


# ---- atomic checkpoints ----

def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000002")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no partial or temp file
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    restored = nn.Linear(2, 2)
    AtomicDetectionCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(restored.weight, model.weight)


def test_a_corrupt_checkpoint_is_reported_by_name(tmp_path):
    path = tmp_path / "model_0000009.pth"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(RuntimeError, match="model_0000009.pth"):
        AtomicDetectionCheckpointer(nn.Linear(2, 2), str(tmp_path)).load(str(path))


def test_channels_last_is_applied_on_a_gpu_device_only(repo_root):
    """MODEL.CHANNELS_LAST: every 4-D weight becomes channels-last for a CUDA device; a CPU model is left alone, and
    the layout does not change what the model computes."""
    from objpretrain.engine.trainer import use_channels_last

    def conv_weights(model):
        return [p for p in model.parameters() if p.dim() == 4]

    cpu = use_channels_last(build_model(tiny_cfg(repo_root)), "cpu")
    assert all(p.is_contiguous() for p in conv_weights(cpu))
    torch.manual_seed(0)
    model = build_model(tiny_cfg(repo_root)).eval()
    batch = make_soco_batch()
    before = sum(model(batch).values()).item()
    gpu_layout = use_channels_last(model, "cuda:0")  # the layout change itself runs on any device
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights(gpu_layout))
    assert sum(gpu_layout(batch).values()).item() == pytest.approx(before, rel=1e-5)
    assert all(p.is_contiguous() for p in conv_weights(use_channels_last(build_model(tiny_cfg(repo_root)),
                                                                          "cuda", enabled=False)))
