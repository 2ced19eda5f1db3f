"""The study's stages (docs/results.md, ``tools/run_study.py``): scenes, proposals, and per arm and seed the
pretraining, conversion, probes and detection transfer, each one of the project's own commands (``tools/*.py``),
printed before it runs, logged, and resumed where a finished ``result.json`` exists.

The study lives with the tools because its stages are the tools: it runs them from the checkout (``REPO``), with
the checkout's configs. The package (``objpretrain``) imports nothing from here.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from objpretrain.utils.atomic_io import atomic_write_json

# The checkout: the stages run its tools/ and configs/.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StudyStageError(RuntimeError):
    """A stage's command failed; the message has its exit status, log file and the log's tail."""


@dataclass(frozen=True)
class Pretraining:
    """How an arm's weights are made: ``kind`` "ssl" (tools/pretrain_net.py with ``config``), "supervised"
    (tools/train_object_classifier.py on the labelled pretraining draw; ``config`` gives its ResNet) or "detector"
    (tools/train_net.py with the detector ``config`` on the labelled pretraining draw)."""

    kind: str
    config: str

    @property
    def probe_config(self):
        """The config the probes build the ResNet from: an SSL arm's own; the learning configs' R18 otherwise (the
        same depth and pixel normalization as the detector and classifier configs)."""
        return self.config if self.kind == "ssl" else PROBE_CONFIG


# Pretraining arms; None is random init. The SSL configs are the CPU learning regime (docs/results.md).
ARMS = {
    "random_init": None,
    # The positive control, the analog of ImageNet-supervised init: a ResNet trained with labels to classify the
    # objects of the pretraining draw (the same 1024 scenes the SSL arms see without labels; disjoint from the
    # fine-tuning and evaluation scenes).
    "supervised": Pretraining("supervised", "configs/learning/byol_r18_scene.yaml"),
    # The positive control of the detection transfer: Faster R-CNN trained on the labels of the same 1024 scenes,
    # transferred like SoCo's full transfer (backbone, FPN and box head; RPN and predictors new). The protocol must
    # see it beat random init before it compares self-supervised arms (docs/results.md, "Detection transfer").
    "supervised_detector": Pretraining("detector", "configs/transfer/faster_rcnn_r18_fpn_scenes_pretrain_labels.yaml"),
    "byol_whole_image": Pretraining("ssl", "configs/learning/byol_r18_scene.yaml"),
    "soco": Pretraining("ssl", "configs/learning/soco_r18_fpn.yaml"),
    "moco_scene": Pretraining("ssl", "configs/learning/moco_v2_r18_scene.yaml"),
    "moco_obj_obj_dilate": Pretraining("ssl", "configs/learning/moco_v2_r18_obj_obj_dilate.yaml"),
}
# The probes read only the ResNet keys and the pixel normalization, the same in every arm's config; this one builds
# random init's ResNet and the non-SSL arms'.
PROBE_CONFIG = "configs/learning/byol_r18_scene.yaml"

# Detection-transfer arms: name -> (pretraining arm, tools/convert_ckpt.py arguments; None = random init). Image-level
# models give the ResNet (FPN and box head initialized anew, OAC §5); SoCo is transferred three ways, SoCo Table 4's
# architecture alignment: backbone only, backbone + FPN, and backbone + FPN + box head (the paper's transfer).
TRANSFERS = {
    "random_init": ("random_init", None),
    "supervised": ("supervised", ("--to", "d2-fpn")),
    "supervised_detector": ("supervised_detector", ("--to", "d2-fpn")),
    "byol_whole_image": ("byol_whole_image", ("--to", "d2-fpn")),
    "moco_scene": ("moco_scene", ("--to", "d2-fpn")),
    "moco_obj_obj_dilate": ("moco_obj_obj_dilate", ("--to", "d2-fpn")),
    "soco_backbone": ("soco", ("--to", "d2-fpn", "--drop", "fpn,box_head")),
    "soco_backbone_fpn": ("soco", ("--to", "d2-fpn", "--drop", "box_head")),
    "soco_full": ("soco", ("--to", "d2-fpn")),
    # The control of the weight-scale defect (docs/results.md, "Detection transfer"): the SoCo backbone with the
    # pretrained weight scale kept, as the official converter loads it.
    "soco_backbone_pretrained_scale": ("soco", ("--to", "d2-fpn", "--drop", "fpn,box_head", "--keep-weight-scale")),
}
# The fine-tuning recipe per number of labelled scenes (docs/results.md, "Detection transfer"): one config each, the
# same for every arm.
TRANSFER_CONFIG = "configs/transfer/faster_rcnn_r18_fpn_scenes_n{n}.yaml"
# COCO metrics recorded per fine-tuning, in percent (Detectron2's bbox/<name>).
AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm")

# result key -> (linear_eval.py --task, --resize and --crop, its metric, that metric's chance level), in percent;
# every arm is probed, random init included.
PROBES = {
    # The pretext task of image-level SSL on held-out scenes: find each image's second augmented view among all
    # second views, at the pretraining view size; what a learning network must beat random init at.
    "view_retrieval": ("retrieval", 64, "top1", "chance_top1"),
    # OAC's protocol: multi-label classification of the image from pooled res5 (OAC §3), at the scenes' 128 px.
    "linear_probe_map": ("multilabel", 128, "mAP", "chance_mAP"),
    # Each annotated object classified from its RoIAligned res4 + res5: the object-level features that SoCo and OAC
    # claim to improve, measured without a detector's training noise. At 64 px the objects have the scale they had
    # in the pretraining views (64-px views of 128-px scenes); at 128 px, the scenes' own. (At 256 px, where an
    # earlier version probed, random init already reads these gray objects at 96 %: no room to show a gain.)
    "object_probe_top1": ("objects", 64, "top1", "chance_top1"),
    "object_probe_128_top1": ("objects", 128, "top1", "chance_top1"),
}

SCALES = {
    # pretrain images, labelled train / val images, pretraining iterations (None: the configs'), labelled scenes per
    # transfer and fine-tuning overrides, probe epochs, supervised-control epochs (and the supervised detector's
    # overrides, "detector_opts"); "skip_transfers": transfer arms not fine-tuned (tools/run_study.py --transfers
    # chooses others). Time of the full scale on 2 idle CPU cores with two arms side by side: docs/results.md.
    "full": dict(pretrain_images=1024, train_images=256, val_images=128, pretrain_iters=None, transfer_scenes=(2, 4),
                 # box AP every 200 iterations, not the configs' 100: 4 points of each curve, and 7 % of a
                 # fine-tuning's time saved (an evaluation takes about 6 s of a 337-s fine-tuning). An evaluation's
                 # loader draws from the random stream, so the period changes a run as another seed would.
                 finetune_opts=("TEST.EVAL_PERIOD", 200), probe_epochs=100, supervised_epochs=2, retrieval_period=50,
                 seeds=(0, 1, 2),
                 # Controls with their answer in docs/results.md, fine-tuned on request: the supervised classifier's
                 # ResNet (the supervised detector is the positive control) and the weight-scale defect's control.
                 skip_transfers=("supervised", "soco_backbone_pretrained_scale")),
    "smoke": dict(pretrain_images=16, train_images=8, val_images=8, pretrain_iters=4, transfer_scenes=(4,),
                  finetune_opts=("SOLVER.MAX_ITER", 4, "SOLVER.STEPS", "(2, 3)", "SOLVER.WARMUP_ITERS", 1,
                                 "TEST.EVAL_PERIOD", 2),
                  probe_epochs=2, supervised_epochs=1, retrieval_period=2, seeds=(0,),
                  pretrain_opts=("SOLVER.IMS_PER_BATCH", 8),
                  # Not fine-tuned at this size: the same conversion and fine-tuning as soco_backbone (which runs, as
                  # does its weight-scale control), with other tools/convert_ckpt.py arguments; tests/test_study.py
                  # converts them itself and checks what they load.
                  skip_transfers=("soco_backbone_fpn", "soco_full"),
                  detector_opts=("SOLVER.MAX_ITER", 4, "SOLVER.STEPS", "(2, 3)", "SOLVER.WARMUP_ITERS", 1,
                                 "TEST.EVAL_PERIOD", 4)),
}


def say(line):
    """Prints a progress line in one write, so that the lines of arms run side by side do not interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def thread_capped_env(threads):
    """The environment of a subprocess whose intra-op threads (torch, OpenMP, MKL) are capped at ``threads``, so that
    processes run side by side do not oversubscribe the cores; None (the inherited one) when ``threads`` is None."""
    if threads is None:
        return None
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def run(cmd, log, threads=None):
    """Runs one stage, its output into ``log``, with at most ``threads`` intra-op threads (``run_study(jobs=...)``).
    Returns its seconds."""
    say("$ " + " ".join(shlex.quote(str(c)) for c in cmd))
    env = thread_capped_env(threads)
    start = time.time()
    with open(log, "w") as f:
        result = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise StudyStageError(f"study stage failed (exit {result.returncode}), log {log}:\n{tail}")
    return time.time() - start


# The scenes (objpretrain.data.datasets.scenes): 8-16 objects of mixed classes, class-determined textures, no
# colour, so whole-image crops mix classes while object crops isolate one, and what survives the augmentations is
# shape, texture and layout (docs/results.md: with a random colour pair per object, which the views keep, every
# pretrained arm learned colour and fell below random init on the object probe).
SCENES = dict(min_objects=8, max_objects=16, clutter=16, class_textures=True, side_range=(14, 36), gray=True)


def make_data(out, scale):
    """The three disjoint scene draws and the labelled subsets of the transfer; returns ``{name: (json, images)}``:
    "pretrain" (labels used only by the supervised control), "train", "val", and "train_n{N}" (the first N scenes
    of "train") for every N of ``scale["transfer_scenes"]``."""
    from objpretrain.data.datasets.scenes import make_scene_coco

    data = {}
    for split, count, seed in (("pretrain", scale["pretrain_images"], 1000),
                               ("train", scale["train_images"], 2000), ("val", scale["val_images"], 3000)):
        folder = os.path.join(out, "data", split)
        json_path = os.path.join(folder, "annotations.json")
        if not os.path.exists(json_path):
            make_scene_coco(folder, num_images=count, image_size=128, seed=seed, **SCENES)
        data[split] = (json_path, os.path.join(folder, "images"))
    for n in scale["transfer_scenes"]:
        data[f"train_n{n}"] = (labelled_subset(data["train"][0], n), data["train"][1])
    return data


def labelled_subset(json_path, n):
    """Writes (once) and returns ``<json>_n{n}.json``: the first ``n`` images of a COCO json and their annotations,
    the scarce labels of a transfer (as SoCo §4.5's Mini COCO takes a fixed subset of train2017)."""
    path = json_path.replace(".json", f"_n{n}.json")
    if not os.path.exists(path):
        with open(json_path) as f:
            coco = json.load(f)
        if len(coco["images"]) < n:
            raise ValueError(f"{json_path} has {len(coco['images'])} images, fewer than the {n} labelled scenes asked")
        images = coco["images"][:n]
        ids = {image["id"] for image in images}
        atomic_write_json(path, dict(coco, images=images,
                                     annotations=[a for a in coco["annotations"] if a["image_id"] in ids]))
    return path


def registration(data, split, name=None):
    """``name:json:image_root`` of a data split, as train_net.py --register-coco and DATASETS.COCO_JSON_REGISTER
    take it; the name defaults to ``study_<split>``."""
    return f"{name or 'study_' + split}:{data[split][0]}:{data[split][1]}"


def last_metric(metrics_json, key):
    value = None
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            if key in record:
                value = record[key]
    if value is None:
        raise KeyError(f"{key} not found in {metrics_json}")
    return value


def metric_curves(metrics_json, keys):
    """``{key: ([iteration], [value])}`` of every key in ``keys`` (str prefixes) found in a Detectron2 metrics.json."""
    curves = {}
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            for key, value in record.items():
                if key.startswith(keys):
                    curves.setdefault(key, ([], []))
                    curves[key][0].append(record["iteration"])
                    curves[key][1].append(value)
    return curves


def loss_curve(metrics_json):
    return metric_curves(metrics_json, ("total_loss",)).get("total_loss", ([], []))


def arm_transfers(arm):
    """The transfer arms of :data:`TRANSFERS` fine-tuned from pretraining arm ``arm``."""
    return [name for name, (source, _) in TRANSFERS.items() if source == arm]


def run_arm(arm, seed, out, data, scale, py, keep_checkpoints=False, device="cpu", workers=2, pretrain_opts=(),
            threads=None):
    arm_dir = os.path.join(out, f"{arm}_seed{seed}")
    result_path = os.path.join(arm_dir, "result.json")
    if os.path.exists(result_path):  # finished earlier: the study resumes where it stopped
        with open(result_path) as f:
            result = json.load(f)
        missing = [probe for probe in PROBES if f"{probe}_chance" not in result]
        if missing:
            # Finished before these probes (or their floors) existed: run them (seconds) on the kept weights.
            say(f"   adding the probes {missing} to {arm_dir}")
            run_probes(arm, seed, arm_dir, result, data, scale, py, device, missing, threads)
            atomic_write_json(result_path, result)
        if missing_transfers(arm, result, scale):
            say(f"   adding the transfers {missing_transfers(arm, result, scale)} to {arm_dir}")
            run_transfers(arm, seed, arm_dir, result, data, scale, py, device, workers, threads)
            atomic_write_json(result_path, result)
        return result
    if os.path.isdir(arm_dir):
        # An arm killed part-way restarts from scratch: its stages do not resume, and Detectron2 appends to an
        # old metrics.json, which would splice two runs into one curve.
        say(f"   removing the unfinished {arm_dir}")
        shutil.rmtree(arm_dir)
    os.makedirs(arm_dir)
    result = {"arm": arm, "seed": seed, "seconds": {}}
    if ARMS[arm] is not None:
        pretrain(arm, seed, arm_dir, result, out, data, scale, py, device, workers, pretrain_opts, threads)
        # The weights exactly as pretrained (--keep-weight-scale): the probes re-estimate BatchNorm, so the scale
        # does not change what they read, and each transfer's conversion from this file restores the initializer's
        # scale or, for the control, keeps it.
        run([py, "tools/convert_ckpt.py", os.path.join(arm_dir, "pretrain", "model_final.pth"),
             os.path.join(arm_dir, "converted.pkl"), "--to", "d2-fpn", "--keep-weight-scale"],
            os.path.join(arm_dir, "convert.log"), threads)
    run_probes(arm, seed, arm_dir, result, data, scale, py, device, threads=threads)
    run_transfers(arm, seed, arm_dir, result, data, scale, py, device, workers, threads)
    atomic_write_json(result_path, result)  # the marker that this arm is done: never half-written
    if not keep_checkpoints:
        remove_training_checkpoints(arm_dir)
    return result


def pretrain(arm, seed, arm_dir, result, out, data, scale, py, device, workers, pretrain_opts, threads=None):
    """The arm's pretraining into ``arm_dir/pretrain/model_final.pth``, with its curves and health in ``result``."""
    spec = ARMS[arm]
    pretrain_dir = os.path.join(arm_dir, "pretrain")
    log = os.path.join(arm_dir, "pretrain.log")
    if spec.kind == "supervised":
        os.makedirs(pretrain_dir)
        result["seconds"]["pretrain"] = run(
            [py, "tools/train_object_classifier.py", "--config-file", spec.config, "--dataset", "study_pretrain_labels",
             "--epochs", scale["supervised_epochs"], "--crop-size", 32, "--seed", seed,
             "--output", os.path.join(pretrain_dir, "model_final.pth"),
             "DATASETS.COCO_JSON_REGISTER", f"({registration(data, 'pretrain', 'study_pretrain_labels')!r},)"],
            log, threads)
        return
    if spec.kind == "detector":
        result["seconds"]["pretrain"] = run(
            [py, "tools/train_net.py", "--config-file", spec.config,
             "--register-coco", registration(data, "pretrain", "study_pretrain_labels"),
             "--register-coco", registration(data, "val"), "SEED", seed, "OUTPUT_DIR", pretrain_dir,
             "MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", workers, *scale.get("detector_opts", ())],
            log, threads)
        result["pretrain_AP"] = last_metric(os.path.join(pretrain_dir, "metrics.json"), "bbox/AP")
        return
    # The configs' own MAX_ITER unless the scale or --pretrain-iters sets one.
    iterations = [] if scale["pretrain_iters"] is None else ["SOLVER.MAX_ITER", scale["pretrain_iters"]]
    result["seconds"]["pretrain"] = run(
        [py, "tools/pretrain_net.py", "--config-file", spec.config,
         "DATASETS.IMAGE_FOLDER_REGISTER", f"('study_pretrain:{data['pretrain'][1]}',)",
         "DATASETS.COCO_JSON_REGISTER", f"({registration(data, 'val')!r},)",
         "DATASETS.TRAIN", "('study_pretrain',)",
         "DATASETS.PROPOSAL_FILES_TRAIN", f"('{os.path.join(out, 'data', 'proposals.pkl')}',)",
         *iterations, "SOLVER.CHECKPOINT_PERIOD", 100000,
         "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET", "study_val",
         "OBJPRETRAIN.HEALTH.RETRIEVAL_PERIOD", scale["retrieval_period"],
         "SEED", seed, "OUTPUT_DIR", pretrain_dir, "MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", workers,
         *scale.get("pretrain_opts", ()), *pretrain_opts],
        log, threads)
    metrics = os.path.join(pretrain_dir, "metrics.json")
    result["pretrain_loss_curve"] = loss_curve(metrics)
    result["health_curves"] = metric_curves(metrics, ("health/", "total_loss", "loss_"))
    with open(os.path.join(pretrain_dir, "health_summary.json")) as f:
        result["health"] = json.load(f)


def missing_transfers(arm, result, scale):
    """``[(transfer arm, N)]`` of this pretraining arm not yet in ``result``, less the scale's ``skip_transfers``."""
    done = result.get("transfer", {})
    return [(name, n) for name in arm_transfers(arm) if name not in scale.get("skip_transfers", ())
            for n in scale["transfer_scenes"] if str(n) not in done.get(name, {})]


def run_transfers(arm, seed, arm_dir, result, data, scale, py, device, workers, threads=None):
    """Fine-tunes every transfer arm of ``arm`` on every labelled subset of the scale; records, per transfer and N,
    the final COCO box metrics and their curves over the fine-tuning iterations in ``result["transfer"]``."""
    for name, n in missing_transfers(arm, result, scale):
        convert_args = TRANSFERS[name][1]
        weights = ""
        if convert_args is not None:
            # From the arm's full d2-fpn conversion at the pretrained scale, which outlives the training checkpoints
            # (a resumed study adds transfers to finished arms); converting it again drops and rescales, nothing else.
            weights = os.path.join(arm_dir, f"converted_{name}.pkl")
            if not os.path.exists(weights):
                run([py, "tools/convert_ckpt.py", os.path.join(arm_dir, "converted.pkl"), weights, *convert_args],
                    os.path.join(arm_dir, f"convert_{name}.log"), threads)
        finetune_dir = os.path.join(arm_dir, f"transfer_{name}_n{n}")
        if os.path.isdir(finetune_dir):  # a killed fine-tuning: Detectron2 would append to its metrics.json
            shutil.rmtree(finetune_dir)
        seconds = run(
            [py, "tools/train_net.py", "--config-file", TRANSFER_CONFIG.format(n=n),
             "--register-coco", registration(data, f"train_n{n}"), "--register-coco", registration(data, "val"),
             "MODEL.WEIGHTS", weights, "SEED", seed, "OUTPUT_DIR", finetune_dir, "MODEL.DEVICE", device,
             "DATALOADER.NUM_WORKERS", workers, *scale["finetune_opts"]],
            os.path.join(arm_dir, f"transfer_{name}_n{n}.log"), threads)
        metrics = os.path.join(finetune_dir, "metrics.json")
        curves = metric_curves(metrics, tuple(f"bbox/{m}" for m in AP_METRICS))
        record = {m: last_metric(metrics, f"bbox/{m}") for m in AP_METRICS}
        record["curve"] = {m: curves[f"bbox/{m}"] for m in ("AP", "AP50")}
        record["seconds"] = seconds
        result.setdefault("transfer", {}).setdefault(name, {})[str(n)] = record


def run_probes(arm, seed, arm_dir, result, data, scale, py, device, probes=tuple(PROBES), threads=None):
    """Runs ``probes`` (names of :data:`PROBES`; default all) on the arm's converted weights (random init: a fresh
    ResNet drawn with ``seed``), in one process, and records score, chance level and seconds in ``result``."""
    config = ARMS[arm].probe_config if ARMS[arm] is not None else PROBE_CONFIG
    weights = ["--random-init"] if ARMS[arm] is None else ["--weights", os.path.join(arm_dir, "converted.pkl")]
    paths = [os.path.join(arm_dir, f"{probe}.json") for probe in probes]
    result["seconds"]["probes"] = result["seconds"].get("probes", 0.0) + run(
        [py, "tools/linear_eval.py", "--config-file", config, *weights, "--seed", seed,
         "--train-dataset", "study_train", "--test-dataset", "study_val", "--epochs", scale["probe_epochs"],
         *(a for p, path in zip(probes, paths)
           for a in ("--probe", f"{PROBES[p][0]},{PROBES[p][1]},{PROBES[p][1]},{path}")),
         "--device", device, "DATASETS.COCO_JSON_REGISTER",
         f"({registration(data, 'train')!r}, {registration(data, 'val')!r})"],
        os.path.join(arm_dir, "probes.log"), threads)
    for probe, path in zip(probes, paths):
        _, _, metric, chance = PROBES[probe]
        with open(path) as f:
            probe_result = json.load(f)
        result[probe] = 100.0 * probe_result[metric]  # in percent, like COCO AP
        result[f"{probe}_chance"] = 100.0 * probe_result[chance]


def remove_training_checkpoints(arm_dir):
    """Delete an arm's ``.pth`` files once its result is recorded; its converted .pkl files stay.

    Each arm writes about 250 MB of pretraining and fine-tuning checkpoints (optimizer state included) that the
    study never reads again; the study's arms would fill a small disk.
    """
    for root, _, files in os.walk(arm_dir):
        for name in files:
            if name.endswith(".pth") or name == "last_checkpoint":
                os.remove(os.path.join(root, name))


def arm_cost(arm, scale):
    """The number of long stages of an arm (pretraining, fine-tunings): the order of work when arms run side by side,
    longest first, so that no lane is left with a long arm at the end."""
    return (ARMS[arm] is not None) + len(missing_transfers(arm, {}, scale))


def run_study(out, scale, arms, py=sys.executable, keep_checkpoints=False, device="cpu", workers=2, pretrain_opts=(),
              prepare_only=False, jobs=1):
    """Makes the data and proposals under ``out`` and runs every arm and seed of ``scale``; returns the results
    (``[]`` with ``prepare_only``). The summary is study.summary's.

    ``jobs`` arms run side by side, each stage with ``cores // jobs`` intra-op threads (``jobs=1``: torch's
    default): on 2 CPU cores, two single-threaded fine-tunings do 1.3x the work of one two-threaded fine-tuning (0.32 s
    per iteration each, against 0.21 for one; docs/performance.md), since a small detector does not keep two threads
    busy. Seeds come in order; within a seed the arms with the most stages start first. Every arm, random init
    included, runs with the same thread count, so that its comparisons are made under one setting."""
    os.makedirs(out, exist_ok=True)
    data = make_data(out, scale)
    proposals = os.path.join(out, "data", "proposals.pkl")
    if not os.path.exists(proposals):
        run([py, "tools/generate_proposals.py", "--images", data["pretrain"][1], "--output", proposals,
             "--no-progress"], os.path.join(out, "proposals.log"))
    if prepare_only:
        return []
    threads = None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)  # None: torch's default
    tasks = sorted(((seed, arm) for seed in scale["seeds"] for arm in arms),
                   key=lambda task: (scale["seeds"].index(task[0]), -arm_cost(task[1], scale)))

    stop = threading.Event()  # set by a failed arm: the arms not yet started are skipped

    def run_task(task):
        if stop.is_set():
            return None
        seed, arm = task
        say(f"== {arm}, seed {seed}")
        try:
            return run_arm(arm, seed, out, data, scale, py, keep_checkpoints, device, workers, pretrain_opts, threads)
        except BaseException:
            stop.set()
            raise

    if jobs == 1:
        return [run_task(task) for task in tasks]
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_task, task) for task in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [future.exception() for future in done if future.exception()]
        if failed:
            # The arms already running finish (their work is kept for the resumed run); no other starts.
            say("== a stage failed: waiting for the running arms to finish, starting no other")
            wait(futures)
            raise failed[0]
        return [future.result() for future in futures]
