"""Fault injection through the tools (docs/reliability.md): SIGKILL and resume, truncated checkpoints,
non-finite losses, and bad input given to generate_proposals, pretrain_net, convert_ckpt and train_net.

The tools run as subprocesses on tiny generated data (six 96x80 images) with one torch thread each. The
pretraining datasets reach them as ``demo_unlabeled`` through ``$OBJPRETRAIN_DEMO_ROOT``.
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode

from objpretrain.data.samplers import ResumableTrainingSampler
from rectangle_scenes import write_rectangle_scenes
from sigkill import sigkill_once_exists

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "soco_r18_fpn_demo.yaml")
FINETUNE_CONFIG = os.path.join(REPO, "configs", "demo", "finetune_trees_r18_fpn.yaml")
IMAGE_IDS = [f"scene_{i}" for i in range(6)]

# The demo architecture narrowed so that a CPU step takes a fraction of a second (as tests/test_soco_model.py).
TINY_PRETRAIN_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.SOCO.PROJECTOR_HIDDEN_DIM", "64", "MODEL.SOCO.PROJECTOR_OUT_DIM", "32",
    "MODEL.SOCO.PREDICTOR_HIDDEN_DIM", "64", "INPUT.SOCO.VIEW_SIZE", "32", "INPUT.SOCO.V3_SIZE", "16",
    "MODEL.SOCO.SCALE_AWARE_THRESHOLDS", "[6, 12, 24]", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "2",
    "OBJPRETRAIN.LOG_PERIOD", "1", "SEED", "3",
]


def _write_proposals(path, ids, boxes):
    with open(path, "wb") as f:
        pickle.dump({"ids": list(ids), "boxes": list(boxes),
                     "objectness_logits": [np.zeros(len(b), np.float32) for b in boxes],
                     "bbox_mode": BoxMode.XYXY_ABS}, f)
    return str(path)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A demo root whose ``unlabeled`` folder holds the six scenes, and their proposal file."""
    root = tmp_path_factory.mktemp("reliability_demo")
    boxes = write_rectangle_scenes(str(root / "unlabeled"))
    return {"root": str(root), "boxes": boxes,
            "proposals": _write_proposals(root / "proposals.pkl", IMAGE_IDS, boxes)}


def _env(demo_root):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OBJPRETRAIN_DEMO_ROOT=demo_root)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return env


def _pretrain_command(output_dir, proposals, *opts, resume=False):
    return [sys.executable, os.path.join(REPO, "tools", "pretrain_net.py"), "--config-file", DEMO_CONFIG] + (
        ["--resume"] if resume else []) + TINY_PRETRAIN_OPTS + [
        "DATASETS.PROPOSAL_FILES_TRAIN", f"('{proposals}',)", "OUTPUT_DIR", str(output_dir)] + list(opts)


def _run(command, demo_root, timeout=240):
    result = subprocess.run(command, cwd=REPO, env=_env(demo_root), capture_output=True, text=True, timeout=timeout)
    result.log = result.stdout + result.stderr
    return result


def _pretrain(scenes, output_dir, *opts, resume=False, proposals=None):
    return _run(_pretrain_command(output_dir, proposals or scenes["proposals"], *opts, resume=resume), scenes["root"])


def _metrics(output_dir):
    """metrics.json rows by iteration; a resumed run re-logs the iterations after its checkpoint, so the last
    row of an iteration wins."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return {row["iteration"]: row for row in map(json.loads, f) if "iteration" in row}


def _checkpoint(output_dir, name):
    return torch.load(os.path.join(output_dir, name), map_location="cpu", weights_only=False)


# ---------------------------------------------------------------- kill and resume (pretraining)

MAX_ITER = 16
CHECKPOINT_PERIOD = 4


@pytest.fixture(scope="module")
def uninterrupted_run(scenes, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    result = _pretrain(scenes, output_dir, "SOLVER.MAX_ITER", str(MAX_ITER),
                       "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD), "DATALOADER.NUM_WORKERS", "0")
    assert result.returncode == 0, result.log[-3000:]
    return str(output_dir)


def _start_and_sigkill(scenes, output_dir, num_workers):
    """Starts pretrain_net, SIGKILLs it (and its loader workers) once its first periodic checkpoint exists."""
    command = _pretrain_command(output_dir, scenes["proposals"], "SOLVER.MAX_ITER", str(MAX_ITER),
                                "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
                                "DATALOADER.NUM_WORKERS", str(num_workers))
    first_checkpoint = os.path.join(str(output_dir), f"model_{CHECKPOINT_PERIOD - 1:07d}.pth")
    sigkill_once_exists(command, first_checkpoint, f"{output_dir}.log", _env(scenes["root"]), timeout=180)
    assert not os.path.exists(os.path.join(str(output_dir), "model_final.pth"))


def _assert_same_curve(expected_dir, got_dir):
    expected, got = _metrics(expected_dir), _metrics(got_dir)
    assert sorted(got) == sorted(expected) == list(range(MAX_ITER))
    for iteration in range(MAX_ITER):
        for key in ("total_loss", "loss_v1_v2", "lr", "momentum_tau"):
            # Tolerance 0: the resumed run computes bit-identical values on a CPU (docs/reliability.md).
            assert got[iteration][key] == expected[iteration][key], (iteration, key)
    final_expected, final_got = _checkpoint(expected_dir, "model_final.pth"), _checkpoint(got_dir, "model_final.pth")
    for name, value in final_expected["model"].items():
        assert torch.equal(value, final_got["model"][name]), name
    assert final_got["trainer"]["hooks"] == final_expected["trainer"]["hooks"]


@pytest.mark.slow
def test_sigkill_then_resume_with_two_workers_matches_an_uninterrupted_run_with_none(
        scenes, uninterrupted_run, tmp_path):
    """Kill with DATALOADER.NUM_WORKERS 2, resume with 2: the loss curve equals the NUM_WORKERS 0 run's."""
    output_dir = tmp_path / "killed"
    _start_and_sigkill(scenes, output_dir, num_workers=2)
    resumed = _pretrain(scenes, output_dir, "SOLVER.MAX_ITER", str(MAX_ITER),
                        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD), "DATALOADER.NUM_WORKERS", "2",
                        resume=True)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert "Data stream resumes at sample" in resumed.log
    _assert_same_curve(uninterrupted_run, str(output_dir))


@pytest.mark.slow
def test_sigkill_then_resume_skips_a_truncated_last_checkpoint(scenes, uninterrupted_run, tmp_path):
    """Kill with NUM_WORKERS 0, truncate the checkpoint that last_checkpoint names (as a disk that lost the
    end of the file would), resume: it warns naming the bad file, resumes from the one before, and the curve
    still equals the uninterrupted run's."""
    output_dir = tmp_path / "killed"
    _start_and_sigkill(scenes, output_dir, num_workers=0)
    saved = sorted(n for n in os.listdir(output_dir) if n.startswith("model_"))
    tag = output_dir / "last_checkpoint"
    last = tag.read_text() if tag.exists() else saved[-1]  # no tag: killed between a save and its tag
    if len(saved) == 1:  # killed before the second checkpoint: take it from the reference run
        last = f"model_{2 * CHECKPOINT_PERIOD - 1:07d}.pth"
        with open(os.path.join(uninterrupted_run, last), "rb") as src, open(output_dir / last, "wb") as dst:
            dst.write(src.read())
        (output_dir / "last_checkpoint").write_text(last)
    data = (output_dir / last).read_bytes()
    (output_dir / last).write_bytes(data[: len(data) // 2])

    resumed = _pretrain(scenes, output_dir, "SOLVER.MAX_ITER", str(MAX_ITER),
                        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD), "DATALOADER.NUM_WORKERS", "0",
                        resume=True)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert f"Cannot read checkpoint '{output_dir / last}'" in resumed.log
    assert f"not from the unreadable {output_dir / last}" in resumed.log
    _assert_same_curve(uninterrupted_run, str(output_dir))


def test_a_sigkill_while_saving_leaves_the_previous_checkpoint_as_the_latest(tmp_path):
    """A process SIGKILLed in the middle of torch.save (half the bytes written): no truncated file under a
    checkpoint name, last_checkpoint still names the previous one, and resuming loads it."""
    script = f"""
import os, signal, torch
from torch import nn
from objpretrain.engine.checkpoint import AtomicDetectionCheckpointer
torch.manual_seed(0)
checkpointer = AtomicDetectionCheckpointer(nn.Linear(3, 3), {str(tmp_path)!r})
checkpointer.save("model_0000001")
def killed_midway(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = killed_midway
checkpointer.save("model_0000002")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(str(tmp_path)), capture_output=True)
    assert result.returncode == -signal.SIGKILL
    visible = sorted(n for n in os.listdir(tmp_path) if not n.startswith("."))
    assert visible == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    from torch import nn

    from objpretrain.engine.checkpoint import AtomicDetectionCheckpointer

    torch.manual_seed(0)
    expected = nn.Linear(3, 3)
    restored = nn.Linear(3, 3)
    AtomicDetectionCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(restored.weight, expected.weight)


def test_resume_without_a_last_checkpoint_tag_uses_the_newest_checkpoint(tmp_path, caplog):
    """A kill between renaming a new checkpoint into place and tagging it leaves no (or an old) tag."""
    from torch import nn

    from objpretrain.engine.checkpoint import AtomicDetectionCheckpointer

    model = nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    with torch.no_grad():
        model.weight.add_(1)
    checkpointer.save("model_0000003")
    os.remove(tmp_path / "last_checkpoint")
    restored = nn.Linear(2, 2)
    resumer = AtomicDetectionCheckpointer(restored, str(tmp_path))
    resumer.resume_or_load("", resume=True)
    assert torch.equal(restored.weight, model.weight)
    assert "last_checkpoint is missing; resuming from the newest checkpoint" in caplog.text
    # DefaultTrainer.resume_or_load continues the iteration count only when this answers True afterwards;
    # answering False would train the loaded weights again from iteration 0.
    assert resumer.has_checkpoint()
    assert not AtomicDetectionCheckpointer(nn.Linear(2, 2), str(tmp_path / "empty")).has_checkpoint()


def test_resume_with_no_readable_checkpoint_fails_naming_the_folder(tmp_path):
    from torch import nn

    from objpretrain.engine.checkpoint import AtomicDetectionCheckpointer, CheckpointReadError

    (tmp_path / "model_0000003.pth").write_bytes(b"\x00garbage")
    (tmp_path / "last_checkpoint").write_text("model_0000007.pth")  # a file that is gone
    with pytest.raises(CheckpointReadError, match=f"no readable checkpoint in '{tmp_path}'"):
        AtomicDetectionCheckpointer(nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)


# ---------------------------------------------------------------- the data stream

def test_sampler_starts_at_any_position_of_the_same_stream_on_every_rank():
    def take(sampler, n):
        stream = iter(sampler)
        return [next(stream) for _ in range(n)]

    whole = take(ResumableTrainingSampler(5, seed=7, rank=0, world_size=1), 40)
    assert sorted(index for _, _, index in whole[:5]) == list(range(5))  # each epoch is a permutation
    assert [p for _, p, _ in whole] == list(range(40))
    assert take(ResumableTrainingSampler(5, seed=7, start=12, rank=0, world_size=1), 28) == whole[12:]
    # Two ranks take alternate positions, as Detectron2's TrainingSampler shards.
    for rank in (0, 1):
        assert take(ResumableTrainingSampler(5, seed=7, start=12, rank=rank, world_size=2), 14) == whole[12 + rank::2]
    assert take(ResumableTrainingSampler(5, seed=8, rank=0, world_size=1), 40) != whole
    with pytest.raises(ValueError, match="multiple of the world size 2"):
        ResumableTrainingSampler(5, seed=7, start=3, rank=0, world_size=2)


def test_repeat_factor_stream_repeats_images_as_detectron2_and_resumes_at_any_position():
    """repeat_factors (LVIS's RepeatFactorTrainingSampler): image i appears floor(r_i) or ceil(r_i) times per epoch,
    r_i on average; the epochs differ in length; a start anywhere continues the same stream, on every rank."""
    factors = [1.0, 1.0, 2.0, 3.5, 1.25]

    def take(sampler, n):
        stream = iter(sampler)
        return [next(stream) for _ in range(n)]

    sampler = ResumableTrainingSampler(5, seed=7, rank=0, world_size=1, repeat_factors=factors)
    epochs = [sampler.epoch_order(e) for e in range(400)]
    counts = np.array([np.bincount(order, minlength=5) for order in epochs])
    assert (counts[:, :3] == [1, 1, 2]).all() and set(counts[:, 3]) == {3, 4} and set(counts[:, 4]) == {1, 2}
    np.testing.assert_allclose(counts.mean(axis=0), factors, atol=0.1)
    assert len({len(order) for order in epochs}) > 1
    whole = take(sampler, 60)
    assert [i for _, _, i in whole[:len(epochs[0])]] == epochs[0]
    for start in (9, 10, 33):
        assert take(ResumableTrainingSampler(5, seed=7, start=start, rank=0, world_size=1, repeat_factors=factors),
                    60 - start) == whole[start:]
    for rank in (0, 1):
        assert take(ResumableTrainingSampler(5, seed=7, start=10, rank=rank, world_size=2, repeat_factors=factors),
                    20) == whole[10 + rank:50:2]
    with pytest.raises(ValueError, match="repeat_factors"):
        ResumableTrainingSampler(5, seed=7, repeat_factors=[1.0, 0.5, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("world_size", [1, 2])
def test_aspect_ratio_grouping_resumes_with_the_batches_of_an_uninterrupted_stream(world_size):
    from objpretrain.data.samplers import AspectRatioGroupedSampler

    landscape = [True, False, False, True, True, False, True]
    batch = 3

    def batches(rank, start, n):
        sampler = AspectRatioGroupedSampler(
            ResumableTrainingSampler(len(landscape), seed=3, rank=rank, world_size=world_size), landscape, batch)
        sampler.set_start(start)
        stream = iter(sampler)
        return [[next(stream) for _ in range(batch)] for _ in range(n)]

    for rank in range(world_size):
        whole = batches(rank, 0, 12)
        for group in whole:  # one orientation per batch, and positions of this rank only
            assert len({landscape[index] for _, _, index in group}) == 1
            assert all(position % world_size == rank for _, position, _ in group)
        assert len({landscape[group[0][2]] for group in whole}) == 2  # both orientations occur
        # resuming at iteration 5 (5 global batches consumed) continues with the uninterrupted batch 5
        assert batches(rank, 5 * batch * world_size, 7) == whole[5:]
    with pytest.raises(ValueError, match="multiple of the global batch"):
        AspectRatioGroupedSampler(ResumableTrainingSampler(7, seed=3, rank=0, world_size=1), landscape, 3).set_start(4)


def test_augmentations_depend_on_the_sample_position_and_not_on_the_process_rng():
    from objpretrain.data.samplers import PositionSeededDataset

    dicts = [{"file_name": f"image_{i}", "image_id": str(i)} for i in range(3)]
    dataset = PositionSeededDataset(dicts, lambda d: (d["image_id"], np.random.rand(), torch.rand(1).item()))
    np.random.seed(1)
    first = dataset[(5, 10, 2)]
    outside = np.random.rand()
    np.random.seed(99)
    torch.manual_seed(99)
    assert dataset[(5, 10, 2)] == first and first[0] == "2"
    assert dataset[(5, 11, 2)] != first and dataset[(6, 10, 2)] != first
    np.random.seed(1)
    assert np.random.rand() == outside  # the caller's RNG is restored after each sample


def test_a_skipped_image_is_replaced_deterministically_and_endless_skips_fail():
    from objpretrain.data.samplers import PositionSeededDataset

    dicts = [{"file_name": f"image_{i}", "image_id": str(i)} for i in range(4)]
    skip_two = PositionSeededDataset(dicts, lambda d: None if d["image_id"] == "2" else d["image_id"])
    replacement = skip_two[(0, 9, 2)]
    assert replacement != "2" and all(skip_two[(0, 9, 2)] == replacement for _ in range(3))
    with pytest.raises(RuntimeError, match="skipped 101 images in a row at sample position 9"):
        PositionSeededDataset(dicts, lambda d: None)[(0, 9, 1)]


# ---------------------------------------------------------------- non-finite losses

# Runs tools/pretrain_net.py with SoCo's losses NaN for every batch that holds the image scene_3.
NAN_INJECTOR = """
import runpy, sys
import objpretrain.modeling.soco as soco
forward = soco.SoCo.forward
def poisoned(self, batched_inputs):
    losses = forward(self, batched_inputs)
    if any(x["image_id"] == "scene_3" for x in batched_inputs):
        losses = {name: value * float("nan") for name, value in losses.items()}
    return losses
soco.SoCo.forward = poisoned
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _batches_with(image_index, num_iterations, seed=3, batch=4, size=6):
    stream = iter(ResumableTrainingSampler(size, seed=seed, rank=0, world_size=1))
    positions = [next(stream)[2] for _ in range(num_iterations * batch)]
    return [i for i in range(num_iterations) if image_index in positions[i * batch:(i + 1) * batch]]


@pytest.mark.slow
def test_nonfinite_loss_stops_the_run_naming_the_batch_images(scenes, tmp_path):
    command = _pretrain_command(tmp_path, scenes["proposals"], "SOLVER.MAX_ITER", "6",
                                "DATALOADER.NUM_WORKERS", "0", "OBJPRETRAIN.NONFINITE_LOSS_POLICY", "raise")
    result = _run([sys.executable, "-c", NAN_INJECTOR] + command[1:], scenes["root"])
    first_bad = _batches_with(3, 6)[0]
    assert result.returncode != 0
    assert f"FloatingPointError: Non-finite loss at iteration {first_bad}" in result.log
    assert "'scene_3'" in result.log and "NONFINITE_LOSS_POLICY='skip'" in result.log
    assert not os.path.exists(tmp_path / "model_final.pth")


@pytest.mark.slow
def test_nonfinite_loss_steps_are_skipped_logged_and_counted_under_the_skip_policy(scenes, tmp_path):
    command = _pretrain_command(tmp_path, scenes["proposals"], "SOLVER.MAX_ITER", "6",
                                "DATALOADER.NUM_WORKERS", "0", "OBJPRETRAIN.NONFINITE_LOSS_POLICY", "skip")
    result = _run([sys.executable, "-c", NAN_INJECTOR] + command[1:], scenes["root"])
    assert result.returncode == 0, result.log[-3000:]
    bad = _batches_with(3, 6)
    assert 0 < len(bad) < 6
    metrics = _metrics(tmp_path)
    assert [i for i in range(6) if "total_loss" not in metrics[i]] == bad  # no loss logged for a skipped step
    assert [metrics[i]["skipped_nonfinite_steps"] for i in bad] == list(range(1, len(bad) + 1))
    assert result.log.count("step skipped") == len(bad) and "'scene_3'" in result.log
    final = _checkpoint(tmp_path, "model_final.pth")
    assert final["trainer"]["_trainer"]["num_skipped_steps"] == len(bad)
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------- bad input through the tools

@pytest.fixture(scope="module")
def bad_scenes(tmp_path_factory):
    """Six good scenes plus a truncated PNG and an empty file; scene_0 has no proposals, scene_1 only boxes
    outside the image, NaN or of zero size."""
    root = tmp_path_factory.mktemp("bad_demo")
    folder = root / "unlabeled"
    boxes = write_rectangle_scenes(str(folder))
    good = (folder / "scene_5.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "empty.png").write_bytes(b"")
    boxes[0] = np.zeros((0, 4), np.float32)
    boxes[1] = np.array([[200, 200, 300, 260], [-50, -40, -10, -5], [np.nan, 0, 10, 10], [10, 10, 10, 30]],
                        np.float32)
    ids = IMAGE_IDS + ["truncated", "empty"]
    boxes += [np.zeros((0, 4), np.float32)] * 2
    return {"root": str(root), "folder": str(folder),
            "proposals": _write_proposals(root / "proposals.pkl", ids, boxes)}


@pytest.mark.slow
def test_pretrain_skips_unreadable_images_by_name_and_pads_images_without_usable_proposals(bad_scenes, tmp_path):
    result = _pretrain(bad_scenes, tmp_path, "SOLVER.MAX_ITER", "4", "DATALOADER.NUM_WORKERS", "0",
                       "OBJPRETRAIN.BAD_IMAGE_POLICY", "skip", "INPUT.SOCO.FALLBACK", "repeat")
    assert result.returncode == 0, result.log[-3000:]
    for name in ("truncated.png", "empty.png"):  # 16 samples of 8 images: each was drawn
        assert f"Skipping unreadable image {os.path.join(bad_scenes['folder'], name)}" in result.log
    assert "the mapper skipped image" in result.log
    metrics = _metrics(tmp_path)
    assert all(np.isfinite(metrics[i]["total_loss"]) for i in range(4))


def test_the_soco_mapper_counts_missing_outside_and_invalid_proposals(bad_scenes):
    from objpretrain.config import get_pretrain_cfg
    from objpretrain.data.soco_mapper import SoCoMapper

    with open(bad_scenes["proposals"], "rb") as f:
        proposals = pickle.load(f)
    mapper = SoCoMapper(get_pretrain_cfg(DEMO_CONFIG, TINY_PRETRAIN_OPTS), is_train=True)
    for index in (0, 1):
        sample = mapper({"file_name": os.path.join(bad_scenes["folder"], f"scene_{index}.png"),
                         "image_id": f"scene_{index}", "proposal_boxes": proposals["boxes"][index],
                         "proposal_bbox_mode": BoxMode.XYXY_ABS})
        assert all(len(b) == mapper.num_proposals and torch.isfinite(b).all() for b in sample["boxes"])
    assert mapper.counters["invalid_proposals"] == 2  # the NaN and the zero-width box
    assert mapper.counters["no_usable_proposals"] == 2  # scene_0 has none, scene_1's are outside the image
    assert mapper.counters["fallback_whole_image_boxes"] == 2 * mapper.num_proposals


@pytest.mark.slow
def test_pretrain_with_bad_image_policy_raise_names_the_file(bad_scenes, tmp_path):
    result = _pretrain(bad_scenes, tmp_path, "SOLVER.MAX_ITER", "4", "DATALOADER.NUM_WORKERS", "0",
                       "OBJPRETRAIN.BAD_IMAGE_POLICY", "raise")
    assert result.returncode != 0
    assert any(os.path.join(bad_scenes["folder"], name) in result.log for name in ("truncated.png", "empty.png"))


@pytest.mark.slow
def test_generate_proposals_records_unreadable_images_with_no_proposals(bad_scenes, tmp_path):
    output = tmp_path / "proposals.pkl"
    result = _run([sys.executable, os.path.join(REPO, "tools", "generate_proposals.py"), "--images",
                   bad_scenes["folder"], "--output", str(output), "--workers", "1", "--no-progress"],
                  bad_scenes["root"])
    assert result.returncode == 0, result.log[-3000:]
    assert "truncated.png" in result.log and "empty.png" in result.log
    with open(output, "rb") as f:
        proposals = pickle.load(f)
    boxes = dict(zip(proposals["ids"], proposals["boxes"]))
    assert sorted(boxes) == sorted(IMAGE_IDS + ["truncated", "empty"])
    assert boxes["truncated"].shape == boxes["empty"].shape == (0, 4)
    assert sorted(proposals["metadata"]["bad_images"]) == ["empty", "truncated"]


@pytest.mark.parametrize("opts, message", [
    (["SOLVER.BASE_LRR", "0.1"], "SOLVER.BASE_LRR"),
    (["SOLVER.MAX_ITER", "ten"], "config key: SOLVER.MAX_ITER"),
    (["INPUT.SOCO.FALLBACK", "nothing"], "INPUT.SOCO.FALLBACK is 'nothing'; allowed: 'repeat', 'whole_image'"),
])
def test_pretrain_rejects_unknown_or_mistyped_config_keys_by_name(scenes, tmp_path, opts, message):
    result = _pretrain(scenes, tmp_path, *opts)
    assert result.returncode != 0 and message in result.log, result.log[-2000:]


def test_pretrain_rejects_an_unknown_key_in_a_config_file_by_name(scenes, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f'_BASE_: "{DEMO_CONFIG}"\nINPUT:\n  SOCO:\n    VIEW_SIZ: 64\n')
    command = _pretrain_command(tmp_path, scenes["proposals"])
    command[command.index(DEMO_CONFIG)] = str(config)
    result = _run(command, scenes["root"])
    assert result.returncode != 0 and "INPUT.SOCO.VIEW_SIZ" in result.log, result.log[-2000:]


def test_pretrain_rejects_a_proposal_file_of_another_dataset_by_name(scenes, tmp_path):
    other = _write_proposals(tmp_path / "other_dataset.pkl", [f"img_{i}" for i in range(6)], scenes["boxes"])
    result = _pretrain(scenes, tmp_path, proposals=other)
    assert result.returncode != 0
    assert "other_dataset.pkl has no entry for 6 of the 6 images of dataset 'demo_unlabeled'" in result.log


@pytest.mark.slow
def test_convert_rejects_the_wrong_target_kind_and_a_truncated_checkpoint(uninterrupted_run, tmp_path):
    pretrained = os.path.join(uninterrupted_run, "model_final.pth")
    convert = [sys.executable, os.path.join(REPO, "tools", "convert_ckpt.py")]
    wrong_kind = _run(convert + [pretrained, str(tmp_path / "c4.pkl"), "--to", "d2-c4"], uninterrupted_run)
    assert wrong_kind.returncode == 1 and "--to d2-fpn" in wrong_kind.stderr, wrong_kind.log[-2000:]
    truncated = tmp_path / "truncated.pth"
    with open(pretrained, "rb") as f:
        truncated.write_bytes(f.read()[:4096])
    cut = _run(convert + [str(truncated), str(tmp_path / "fpn.pkl"), "--to", "d2-fpn"], uninterrupted_run)
    assert cut.returncode == 1 and str(truncated) in cut.stderr
    assert not any(n.endswith(".pkl") for n in os.listdir(tmp_path))


# ---------------------------------------------------------------- fine-tuning

@pytest.fixture(scope="module")
def finetune_set(tmp_path_factory):
    from objpretrain.data.datasets.synthetic import make_synthetic_coco

    json_path, image_root = make_synthetic_coco(str(tmp_path_factory.mktemp("ft_synthetic")), num_images=4,
                                                image_size=96, seed=0)
    return f"ft_reliability:{json_path}:{image_root}"


def _train_net(finetune_set, output_dir, *opts, resume=False):
    return _run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", FINETUNE_CONFIG,
                 "--register-coco", finetune_set] + (["--resume"] if resume else []) + [
        "DATASETS.TRAIN", "('ft_reliability',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0", "MODEL.WEIGHTS", "",
        "OUTPUT_DIR", str(output_dir)] + list(opts), os.path.dirname(str(output_dir)))


@pytest.mark.slow
def test_finetune_checkpoints_atomically_and_resumes_past_a_truncated_last_checkpoint(finetune_set, tmp_path):
    first = _train_net(finetune_set, tmp_path / "run", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    assert first.returncode == 0, first.log[-3000:]
    run = tmp_path / "run"
    assert (run / "last_checkpoint").read_text() == "model_final.pth"
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]
    data = (run / "model_final.pth").read_bytes()
    (run / "model_final.pth").write_bytes(data[: len(data) // 2])

    resumed = _train_net(finetune_set, run, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", resume=True)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert f"Cannot read checkpoint '{run / 'model_final.pth'}'" in resumed.log
    assert f"Resumed from {run / 'model_0000003.pth'}" in resumed.log
    assert _checkpoint(str(run), "model_final.pth")["iteration"] == 5


@pytest.mark.slow
def test_finetune_resume_continues_the_data_stream_and_step_rngs_exactly(finetune_set, tmp_path):
    """A fine-tuning run resumed from its iteration-3 checkpoint ends with the same weights, to the bit, as
    the run that was never stopped: same batches (stream position, per-sample augmentation seeds) and the same
    RPN / RoI sampling (torch's RNG state in the checkpoint)."""
    opts = ("SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SEED", "5")
    whole = _train_net(finetune_set, tmp_path / "whole", *opts)
    assert whole.returncode == 0, whole.log[-3000:]
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "whole" / "model_0000002.pth", resumed_dir / "model_0000002.pth")
    (resumed_dir / "last_checkpoint").write_text("model_0000002.pth")
    resumed = _train_net(finetune_set, resumed_dir, *opts, resume=True)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert "Data stream resumes at sample 6 (iteration 3" in resumed.log
    final_whole = _checkpoint(str(tmp_path / "whole"), "model_final.pth")["model"]
    final_resumed = _checkpoint(str(resumed_dir), "model_final.pth")["model"]
    assert final_whole.keys() == final_resumed.keys()
    differing = [k for k in final_whole if not torch.equal(final_whole[k], final_resumed[k])]
    assert not differing, differing[:5]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated_weights", "unknown_key"])
def test_finetune_rejects_truncated_weights_and_unknown_keys_by_name(finetune_set, tmp_path, case):
    if case == "truncated_weights":
        weights = tmp_path / "converted.pth"
        torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, weights)
        weights.write_bytes(weights.read_bytes()[:100])
        result = _train_net(finetune_set, tmp_path / "run", "MODEL.WEIGHTS", str(weights))
        assert result.returncode != 0 and f"Cannot read checkpoint '{weights}'" in result.log, result.log[-2000:]
    else:
        result = _train_net(finetune_set, tmp_path / "run", "SOLVER.MAX_ITERS", "4")
        assert result.returncode != 0 and "SOLVER.MAX_ITERS" in result.log, result.log[-2000:]


def test_finetune_loader_takes_detectron2_repeat_factors_for_the_repeat_factor_sampler(synthetic_coco):
    from detectron2.data import DatasetCatalog
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    from objpretrain.config import get_pretrain_cfg
    from objpretrain.data.build import build_resumable_detection_train_loader

    cfg = get_pretrain_cfg(opts=["DATASETS.TRAIN", f"('{synthetic_coco['name']}',)", "DATALOADER.NUM_WORKERS", "0",
                                 "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                                 "DATALOADER.REPEAT_THRESHOLD", "1.0", "INPUT.MIN_SIZE_TRAIN", "(64,)",
                                 "DATALOADER.ASPECT_RATIO_GROUPING", "False"])
    loader = build_resumable_detection_train_loader(cfg)
    whole, fraction = loader.resumable_sampler._repeat_factors
    expected = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        DatasetCatalog.get(synthetic_coco["name"]), 1.0)
    assert torch.allclose(whole + fraction, expected) and (expected > 1).any()
    assert len(next(iter(loader))) == 2
    cfg.DATALOADER.SAMPLER_TRAIN = "RandomSubsetTrainingSampler"
    with pytest.raises(ValueError, match="RandomSubsetTrainingSampler"):
        build_resumable_detection_train_loader(cfg)
