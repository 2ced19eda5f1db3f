"""Multi-process and multi-machine training on a CPU machine: Detectron2's ``launch`` with gloo, as on GPUs with
NCCL (docs/pretraining.md, "Several processes and machines").

Equivalence: the data stream is a function of the global sample position (objpretrain.data.samplers), so 2
processes x 4 images see the 8 images of 1 process x 8, with the same augmentations; with synchronized BatchNorm
(naiveSyncBN, which all-reduces through gloo), DDP's gradient all-reduce and the MoCo queue gathering every rank's
keys, the losses and weights are those of the single process up to float summation order. Each comparison fails
when its mechanism is removed (the rank-local BN control below; a sampler giving every rank the same images, no
gradient all-reduce or a queue filled by one rank change the losses in the same way).
"""
import importlib.util
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode

from rectangle_scenes import write_rectangle_scenes
from sigkill import sigkill_once_exists

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
SYNC_BN = ["MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.FPN.NORM", "naiveSyncBN",
           "MODEL.ROI_BOX_HEAD.NORM", "naiveSyncBN", "MODEL.SOCO.HEAD_NORM", "naiveSyncBN"]


def _command(tool, config, output, *opts, num_gpus=1, extra=()):
    return [sys.executable, f"tools/{tool}", "--config-file", config, "--num-gpus", str(num_gpus), *extra,
            *opts, "OUTPUT_DIR", str(output)]


def _run(command, timeout=600):
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    result.log = result.stdout + result.stderr
    assert result.returncode == 0, result.log[-4000:]
    return result


def _metrics(output):
    """metrics.json rows by iteration (a resumed run re-logs the rows after its checkpoint: the last one wins)."""
    with open(os.path.join(output, "metrics.json")) as f:
        return {row["iteration"]: row for row in map(json.loads, f) if "iteration" in row}


def _weights(output, name="model_final.pth"):
    return torch.load(os.path.join(output, name), map_location="cpu", weights_only=False)["model"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_scenes")
    boxes = write_rectangle_scenes(str(root / "images"), count=16)
    proposals = root / "proposals.pkl"
    with open(proposals, "wb") as f:
        pickle.dump({"ids": [f"scene_{i}" for i in range(len(boxes))], "boxes": boxes,
                     "objectness_logits": [np.zeros(len(b), np.float32) for b in boxes],
                     "bbox_mode": BoxMode.XYXY_ABS}, f)
    return ["DATASETS.IMAGE_FOLDER_REGISTER", f"('ddp_scenes:{root / 'images'}',)", "DATASETS.TRAIN",
            "('ddp_scenes',)", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{proposals}',)", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "8", "SOLVER.WARMUP_ITERS", "1", "OBJPRETRAIN.LOG_PERIOD", "1",
            "OBJPRETRAIN.HEALTH.ENABLED", "False", "SOLVER.CHECKPOINT_PERIOD", "100"]


SOCO_TINY = ["INPUT.SOCO.VIEW_SIZE", "64", "INPUT.SOCO.V3_SIZE", "32", "SOLVER.MAX_ITER", "3"]


def _assert_same_training(expected, got, loss_keys, permuted=(), weights_atol=1e-3):
    """Losses within 1e-4 relative and every weight within 1e-3 absolute. Measured on the SoCo run: the losses
    agree to 2e-6 and the weights to 3e-4 (naiveSyncBN's variance E[x^2] - E[x]^2 rounds differently from one
    process's BatchNorm; 2e-5 between two single-process runs with 1 and 2 threads), while rank-local BN moves the
    first loss by 1e-3 and the weights by 3e-2. Tensors whose names end with ``permuted`` are compared by the
    caller; ``weights_atol`` is the weights' tolerance."""
    # Rows that hold the losses (a rank-local event, e.g. fast_rcnn/fg_cls_accuracy, may add a row of its own).
    rows_expected, rows_got = ({i: r for i, r in _metrics(run).items() if loss_keys[0] in r} for run in (expected, got))
    assert rows_expected and sorted(rows_got) == sorted(rows_expected)
    for iteration, row in rows_expected.items():
        for key in loss_keys:
            assert rows_got[iteration][key] == pytest.approx(row[key], rel=1e-4), (iteration, key)
    weights_expected, weights_got = _weights(expected), _weights(got)
    for name, value in weights_expected.items():
        if name.endswith(("running_var", "num_batches_tracked", *permuted)):
            continue  # naiveSyncBN keeps the biased variance where one process's BatchNorm keeps the unbiased
        assert (weights_got[name].float() - value.float()).abs().max() <= weights_atol, name


@pytest.mark.slow
def test_soco_on_two_processes_equals_one_process_with_synchronized_bn(scenes, tmp_path):
    """SoCo R18-FPN: 2 processes x 4 images = 1 process x 8 (losses and weights); only rank 0 writes; with
    rank-local BN the losses differ (the control that shows the comparison can fail)."""
    config = "configs/demo/soco_r18_fpn_demo.yaml"
    one, two, local_bn = tmp_path / "one", tmp_path / "two", tmp_path / "local_bn"
    _run(_command("pretrain_net.py", config, one, *scenes, *SOCO_TINY, *SYNC_BN))
    result = _run(_command("pretrain_net.py", config, two, *scenes, *SOCO_TINY, *SYNC_BN, num_gpus=2))
    assert "Rank of current process: 1. World size: 2" in (two / "log.txt.rank1").read_text()
    assert "World size: 2" in result.log
    _assert_same_training(one, two, ("loss_v1_v2", "loss_v1_v3", "total_loss"))
    # One writer: every metrics row once, one checkpoint, no file of rank 1 but its log.
    assert [r["iteration"] for r in map(json.loads, open(two / "metrics.json")) if "iteration" in r] == [0, 1, 2]
    assert sorted(n for n in os.listdir(two) if n.endswith(".pth")) == ["model_final.pth"]
    assert [n for n in os.listdir(two) if "rank1" in n] == ["log.txt.rank1"]

    # The control: rank-local BN (one process's naiveSyncBN is plain BN, so "one" is its reference too).
    _run(_command("pretrain_net.py", config, local_bn, *scenes, *SOCO_TINY, num_gpus=2))
    assert _metrics(local_bn)[0]["total_loss"] != pytest.approx(_metrics(one)[0]["total_loss"], rel=1e-4)
    with pytest.raises(AssertionError):
        _assert_same_training(one, local_bn, ("total_loss",))


@pytest.mark.slow
def test_moco_queue_on_two_machines_equals_one_process(scenes, tmp_path):
    """OAC MoCo-v2 on two "machines" of one process each (two launches, --num-machines 2 --machine-rank 0|1 and
    one --dist-url): the queue holds every rank's keys, in rank order, so from iteration 1 on, when the queue's
    keys are the negatives, the losses and weights equal one process x 8 images (a queue filled by one rank
    would hold 4 negatives at iteration 1, not 8). Three iterations: from the fourth on this run amplifies float
    rounding (two single-process runs with 1 and 2 threads differ by 4e-5 in the weights after 3 iterations and
    by 1e-3 in the fourth loss), so later iterations would compare rounding, not the mechanism."""
    config = "configs/demo/oac_moco_r18_demo.yaml"
    opts = [*scenes, "MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.OAC.QUEUE_SIZE", "16",
            "MODEL.OAC.QUEUE_START", "empty", "MODEL.OAC.LAMBDA_ROT", "0.0", "MODEL.OAC.LAMBDA_LOC", "0.0",
            "SOLVER.MAX_ITER", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_command("pretrain_net.py", config, one, *opts))
    url = f"tcp://127.0.0.1:{_free_port()}"
    logs = [open(tmp_path / f"machine{rank}.log", "w") for rank in (0, 1)]  # files: a full pipe would block
    machines = [
        subprocess.Popen(_command("pretrain_net.py", config, two, *opts, extra=(
            "--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url)), cwd=REPO, env=ENV,
            stdout=logs[rank], stderr=subprocess.STDOUT)
        for rank in (0, 1)]
    for machine, log in zip(machines, logs):
        machine.wait(timeout=600)
        log.close()
    assert [m.returncode for m in machines] == [0, 0], "".join(
        (tmp_path / f"machine{rank}.log").read_text()[-3000:] for rank in (0, 1))
    assert "Rank of current process: 1. World size: 2" in (two / "log.txt.rank1").read_text()
    _assert_same_training(one, two, ("total_loss",), permuted=(".keys",))
    final_one, final_two = _weights(one), _weights(two)
    queues = [name for name in final_one if name.endswith(".keys")]
    assert len(queues) == 2  # one per view (separate heads)
    # The same keys, gathered in rank order: rank r holds global positions r, r + 2, ... of each batch (the
    # queue of 16 holds iteration 2's keys over iteration 0's, then iteration 1's).
    order = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]
    for queue in queues:
        assert torch.allclose(final_two[queue], final_one[queue][order], atol=1e-4), queue


FINETUNE_TINY = ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN",
                 "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "4",
                 "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD",
                 "2", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "SEED", "5"]
FINETUNE_CONFIG = "configs/demo/finetune_trees_r18_fpn.yaml"


def _finetune_command(synthetic_coco, output, num_gpus, resume=False, test=True):
    spec = f"ddp_coco:{synthetic_coco['json']}:{synthetic_coco['image_root']}"
    extra = ["--register-coco", spec] + (["--resume"] if resume else [])
    return _command("train_net.py", FINETUNE_CONFIG, output, "DATASETS.TRAIN", "('ddp_coco',)", "DATASETS.TEST",
                    "('ddp_coco',)" if test else "()", *FINETUNE_TINY, num_gpus=num_gpus, extra=extra)


@pytest.mark.slow
def test_finetune_on_two_processes_equals_one_process_with_synchronized_bn(synthetic_coco, tmp_path):
    """Faster R-CNN R18-FPN, 2 processes x 2 images against 1 x 4, naiveSyncBN in backbone, FPN and box head, and
    anchor and RoI sampling that keeps every candidate (RPN batch 4096 >= the 4092 anchors of a 128-px image at
    positive fraction 1, 64 RoIs of 64 proposals, no ground truth appended), so that neither run's random draws
    choose what the loss sees and every image has as many RoIs. Measured: the losses agree to 1e-6, the weights to
    6e-5 after 3 iterations; with rank-local BN the weights differ by 2e-3 and the loss by 1 %."""
    spec = f"ddp_coco:{synthetic_coco['json']}:{synthetic_coco['image_root']}"
    opts = ["DATASETS.TRAIN", "('ddp_coco',)", "DATASETS.TEST", "()", *FINETUNE_TINY, "SOLVER.MAX_ITER", "3",
            "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "4096",
            "MODEL.RPN.POSITIVE_FRACTION", "1.0", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False"]
    sync = ["MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.FPN.NORM", "naiveSyncBN", "MODEL.ROI_BOX_HEAD.NORM",
            "naiveSyncBN"]
    runs = {"one": (1, sync), "two": (2, sync), "local_bn": (2, [])}
    for name, (processes, norms) in runs.items():
        _run(_command("train_net.py", FINETUNE_CONFIG, tmp_path / name, *opts, *norms, num_gpus=processes,
                      extra=("--register-coco", spec)))
    losses = ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "total_loss")
    _assert_same_training(tmp_path / "one", tmp_path / "two", losses, weights_atol=3e-4)
    with pytest.raises(AssertionError):
        _assert_same_training(tmp_path / "one", tmp_path / "local_bn", losses, weights_atol=3e-4)


@pytest.mark.slow
def test_finetune_sigkilled_on_two_processes_resumes_exactly_and_on_one_or_four(synthetic_coco, tmp_path):
    """Faster R-CNN R18-FPN on 2 processes, SIGKILLed after its checkpoint at iteration 1 and resumed on 2: the
    losses and weights equal the uninterrupted run's exactly, each rank's RNG state included (its RoI sampling
    draws from it). The same checkpoint resumed on 1 and on 4 processes continues at the same global sample,
    with the note that the per-rank RNGs were re-seeded. COCO evaluation runs on 2 processes at the end."""
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    result = _run(_finetune_command(synthetic_coco, uninterrupted, num_gpus=2))
    assert "World size: 2" in result.log
    with open(uninterrupted / "metrics.json") as f:
        assert any('"bbox/AP"' in line for line in f)

    sigkill_once_exists(_finetune_command(synthetic_coco, killed, num_gpus=2, test=False),
                        str(killed / "model_0000001.pth"), str(tmp_path / "killed.log"), ENV)
    assert not (killed / "model_final.pth").exists()
    for name in os.listdir(killed):  # resume from iteration 1's checkpoint whatever the kill left after it
        if name.startswith("model_") and name != "model_0000001.pth":
            os.remove(killed / name)
    (killed / "last_checkpoint").write_text("model_0000001.pth")
    for size in (1, 4):
        os.makedirs(tmp_path / f"on{size}")
        for name in ("model_0000001.pth", "last_checkpoint"):
            (tmp_path / f"on{size}" / name).write_bytes((killed / name).read_bytes())

    resumed = _run(_finetune_command(synthetic_coco, killed, num_gpus=2, resume=True, test=False))
    assert "Data stream resumes at sample 8 (iteration 2" in resumed.log
    assert "RNG states of" not in resumed.log
    final_expected, final_got = _weights(uninterrupted), _weights(killed)
    differing = [name for name, value in final_expected.items() if not torch.equal(final_got[name], value)]
    assert not differing, differing[:5]

    for size in (1, 4):
        other = _run(_finetune_command(synthetic_coco, tmp_path / f"on{size}", num_gpus=size, resume=True,
                                       test=False))
        assert "Data stream resumes at sample 8 (iteration 2" in other.log
        assert f"RNG states of 2 processes and this run has {size}" in other.log
        assert (tmp_path / f"on{size}" / "model_final.pth").exists()


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_job_naming_it(scenes, tmp_path):
    """SIGKILL of rank 1 in the middle of training: the launcher stops rank 0 and exits non-zero within a
    bounded time with an error that names the rank, instead of rank 0 waiting in its next all-reduce."""
    output = tmp_path / "run"
    command = _command("pretrain_net.py", "configs/demo/soco_r18_fpn_demo.yaml", output, *scenes,
                       "INPUT.SOCO.VIEW_SIZE", "64", "INPUT.SOCO.V3_SIZE", "32", "SOLVER.MAX_ITER", "100000",
                       num_gpus=2)
    log_file = open(tmp_path / "launcher.log", "w")  # a file, not a pipe nobody reads while it runs
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=log_file, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        metrics, deadline = output / "metrics.json", time.time() + 300
        while not (metrics.exists() and '"iteration"' in metrics.read_text()) and time.time() < deadline:
            assert process.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
            time.sleep(0.1)
        assert metrics.exists(), "training did not start"
        pid = int((output / "log.txt.rank1").read_text().split("Rank 1: process id ")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log_file.close()
    log = (tmp_path / "launcher.log").read_text()
    assert process.returncode != 0
    assert time.time() - killed_at < 60
    assert "process 1 terminated with signal SIGKILL" in log, log[-3000:]


@pytest.mark.slow
def test_linear_eval_on_two_processes_equals_one(synthetic_coco, tmp_path):
    """tools/linear_eval.py --num-gpus 2: each rank extracts one block of images, rank 0's re-estimated BatchNorm
    statistics are broadcast, and the result (object probe and image probe) is one process's; the feature cache
    is written once."""
    register = f"('ddp_probe:{synthetic_coco['json']}:{synthetic_coco['image_root']}',)"
    spec = importlib.util.spec_from_file_location("linear_eval", os.path.join(REPO, "tools", "linear_eval.py"))
    linear_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(linear_eval)
    for task in ("objects", "multilabel"):
        results = {}
        for processes in (1, 2):
            output = tmp_path / f"{task}_{processes}.json"
            args = ["--config-file", "configs/demo/oac_moco_r18_demo.yaml", "--random-init", "--train-dataset",
                    "ddp_probe", "--test-dataset", "ddp_probe", "--task", task, "--resize", "64", "--crop", "64",
                    "--epochs", "20", "--num-gpus", str(processes), "--cache-dir",
                    str(tmp_path / f"cache_{task}_{processes}"), "--output", str(output),
                    "DATASETS.COCO_JSON_REGISTER", register]
            if processes == 1:
                linear_eval.main([os.path.join(REPO, a) if a.startswith("configs/") else a for a in args])
            else:
                _run([sys.executable, "tools/linear_eval.py", *args])
            with open(output) as f:
                results[processes] = json.load(f)
        metric = "top1" if task == "objects" else "mAP"
        assert results[2]["num_train"] == results[1]["num_train"] > 0
        assert results[2][metric] == pytest.approx(results[1][metric], abs=1e-6), task
        assert len(os.listdir(tmp_path / f"cache_{task}_2")) == 1  # train and test share one set: one file


SHUFFLE_SCRIPT = """
import atexit, json, sys
import torch
from objpretrain.engine.defaults import launch  # leaves the process group at the end, as the tools do
from detectron2.utils import comm
from objpretrain.modeling.oac import shuffle_across_ranks

def record_group_at_exit(out, rank):
    with open(f"{out}.exit{rank}", "w") as f:
        json.dump(torch.distributed.is_initialized(), f)

def check(out):
    rank = comm.get_rank()
    atexit.register(record_group_at_exit, out, rank)
    torch.manual_seed(rank)  # the ranks' own RNGs differ; the order is rank 0's
    rows = torch.arange(4.0)[:, None] + 10 * rank  # sample ids: rank 0 holds 0-3, rank 1 holds 10-13
    shuffled, unshuffle = shuffle_across_ranks(rows)
    result = {
        "shuffled": shuffled[:, 0].tolist(),
        "per_sample_round_trip": torch.equal(unshuffle(shuffled * 2 + 1), rows * 2 + 1),
        # A batch statistic (what BatchNorm uses), computed on the mixed batch and put back in order.
        "centred": unshuffle(shuffled - shuffled.mean(dim=0))[:, 0].tolist(),
    }
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)

if __name__ == "__main__":
    launch(check, 2, dist_url="auto", args=(sys.argv[1],))
"""


@pytest.mark.slow
def test_shuffle_bn_mixes_the_key_batch_across_processes_and_restores_the_order(tmp_path):
    """MoCo's shuffle-BN on 2 gloo processes: each rank's key batch is rank 0's random draw from all ranks'
    samples (the two shares partition them and mix them), a per-sample output comes back in the original order,
    and a batch statistic is that of the mixed batch, not of the rank's own. The model-level check is the MoCo
    equivalence test above, which runs with MODEL.OAC.SHUFFLE_BN on (the default)."""
    script = tmp_path / "shuffle.py"
    script.write_text(SHUFFLE_SCRIPT)
    _run([sys.executable, str(script), str(tmp_path / "result")], timeout=300)
    results = [json.loads((tmp_path / f"result.{rank}").read_text()) for rank in (0, 1)]
    shares = [set(r["shuffled"]) for r in results]
    assert shares[0] | shares[1] == {0, 1, 2, 3, 10, 11, 12, 13} and not shares[0] & shares[1]
    assert shares[0] != {0, 1, 2, 3} and shares[0] != {10, 11, 12, 13}, "the draw did not mix the ranks"
    assert all(r["per_sample_round_trip"] for r in results)
    # The workers left the process group before exiting (an exit with gloo alive aborted a rank in CI).
    assert [json.loads((tmp_path / f"result.exit{rank}").read_text()) for rank in (0, 1)] == [False, False]
    for rank, result in enumerate(results):
        own = [i + 10 * rank for i in range(4)]
        # Each sample is centred by the mean of the batch that held it, whichever rank that was.
        expected = [v - np.mean(next(list(share) for share in shares if v in share)) for v in own]
        got = result["centred"]
        assert got == pytest.approx(expected)
        assert got != pytest.approx([v - sum(own) / 4 for v in own])  # not the rank-local statistic
