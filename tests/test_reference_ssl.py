"""The plain-PyTorch reference loops (bench/reference_ssl.py) run, measure retrieval from iteration 0 and move the
ResNet; docs/results.md compares them with the project's arms."""
import importlib.util
import math
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference():
    spec = importlib.util.spec_from_file_location("reference_ssl", os.path.join(REPO, "bench", "reference_ssl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from objpretrain.data.datasets.scenes import make_scene_coco

    root = tmp_path_factory.mktemp("reference")
    make_scene_coco(str(root / "train"), num_images=8, image_size=64, seed=0)
    make_scene_coco(str(root / "val"), num_images=6, image_size=64, seed=1)
    return str(root / "train" / "images"), str(root / "val" / "images")


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_reference_loop_trains_and_reports_retrieval_and_movement(method, scenes, tmp_path):
    reference = _reference()
    output = tmp_path / "record.json"
    record = reference.main(["--method", method, "--images", scenes[0], "--eval-images", scenes[1], "--iters", "4",
                             "--batch", "4", "--size", "32", "--queue", "16", "--warmup", "2", "--log-every", "2",
                             "--eval-every", "4", "--workers", "0", "--output", str(output)])
    assert output.exists()
    assert [step for step, _ in record["retrieval"]] == [0, 4]
    assert all(0 <= top1 <= 1 for _, top1 in record["retrieval"]) and record["chance"] == pytest.approx(1 / 6)
    assert [step for step, _, _ in record["log"]] == [2, 4]
    assert all(math.isfinite(loss) and -1 <= cosine <= 1 for _, loss, cosine in record["log"])
    assert set(record["move_since_start"]) == {"stem", "res2", "res3", "res4", "res5"}
    assert all(value > 0 for value in record["move_since_start"].values())


def test_reference_lr_warms_up_then_follows_a_cosine_over_the_rest():
    reference = _reference()
    assert reference.lr_at(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert reference.lr_at(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert reference.lr_at(4, 1.0, 4, 20) == pytest.approx(1.0)
    assert reference.lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_the_comparison_gives_both_loops_the_same_settings(method, tmp_path):
    """bench/reference_vs_project.py: the project's overrides and the reference's arguments agree."""
    spec = importlib.util.spec_from_file_location("rvp", os.path.join(REPO, "bench", "reference_vs_project.py"))
    rvp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rvp)
    from objpretrain.config import get_pretrain_cfg

    project = rvp.project_command(method, str(tmp_path), str(tmp_path), str(tmp_path / "out"), 3, 200)
    config, opts = project[project.index("--config-file") + 1], project[project.index("--config-file") + 2:]
    cfg = get_pretrain_cfg(os.path.join(REPO, config), opts)
    reference = _reference()
    parser_args = rvp.reference_command(method, str(tmp_path), str(tmp_path), "x.json", 3, 200)[2:]
    captured = {}
    reference.train = lambda args: captured.setdefault("args", args)
    reference.main(parser_args)
    args = captured["args"]
    assert cfg.SOLVER.IMS_PER_BATCH == args.batch and cfg.SOLVER.BASE_LR == args.lr
    assert cfg.SOLVER.WARMUP_ITERS == args.warmup and cfg.SOLVER.MAX_ITER == args.iters and cfg.SEED == args.seed
    assert cfg.INPUT.OAC.SCENE_CROP_MIN == args.crop_min and tuple(cfg.INPUT.OAC.COLOR_JITTER) == tuple(args.jitter)
    assert cfg.INPUT.OAC.CROP_SIZE == args.size and cfg.MODEL.OAC.MOMENTUM == args.momentum
    assert cfg.MODEL.OAC.HEAD_HIDDEN_DIM == args.hidden and cfg.MODEL.OAC.HEAD_OUT_DIM == args.dim
    assert cfg.SOLVER.WEIGHT_DECAY == args.weight_decay and cfg.INPUT.OAC.GRAYSCALE_PROB == args.grayscale_prob
    if method == "moco":
        assert cfg.MODEL.OAC.QUEUE_SIZE == args.queue and cfg.MODEL.OAC.TEMPERATURE == args.temperature
    else:
        assert cfg.MODEL.OAC.HEAD_NORM == "BN" and cfg.MODEL.OAC.PREDICTOR_HIDDEN_DIM == args.hidden
