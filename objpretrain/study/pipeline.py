"""The study's stages (docs/results.md, ``tools/run_study.py``): scenes, proposals, and per arm and seed the
pretraining, conversion, probes and optional fine-tuning, each one of the project's own commands run from the
checkout, printed before it runs, logged, and resumed where a finished ``result.json`` exists."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from ..utils.atomic_io import atomic_write_json

# The checkout: the stages run its tools/ and configs/.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StudyStageError(RuntimeError):
    """A stage's command failed; the message has its exit status, log file and the log's tail."""


# name -> (pretraining config, overrides); None means no pretraining. The configs are the CPU learning regime.
ARMS = {
    "random_init": None,
    "byol_whole_image": ("configs/learning/byol_r18_scene.yaml", []),
    "soco": ("configs/learning/soco_r18_fpn.yaml", []),
    "moco_scene": ("configs/learning/moco_v2_r18_scene.yaml", []),
    "moco_obj_obj_dilate": ("configs/learning/moco_v2_r18_obj_obj_dilate.yaml", []),
}
FINETUNE_CONFIG = "configs/demo/finetune_trees_r18_fpn.yaml"
# The probes read only the ResNet keys and the pixel normalization, the same in every arm's config.
PROBE_CONFIG_RANDOM_INIT = ARMS["byol_whole_image"][0]
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
    # pretrain images, finetune train / val images, pretraining and finetuning iterations, linear-probe epochs
    # Sized for about 2 hours on 2 idle CPU cores (docs/results.md has the measured wall time).
    "full": dict(pretrain_images=1024, train_images=256, val_images=128, pretrain_iters=None,
                 finetune_iters=0, probe_epochs=100, retrieval_period=50, seeds=(0, 1, 2)),
    "smoke": dict(pretrain_images=16, train_images=8, val_images=8, pretrain_iters=4,
                  finetune_iters=4, probe_epochs=2, retrieval_period=2, seeds=(0,),
                  pretrain_opts=("SOLVER.IMS_PER_BATCH", 8)),
}


def run(cmd, log):
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    start = time.time()
    with open(log, "w") as f:
        result = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
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
    from objpretrain.data.datasets.scenes import make_scene_coco

    # Three disjoint draws of the same scene distribution (different generator seeds).
    data = {}
    for split, count, seed in (("pretrain", scale["pretrain_images"], 1000),
                               ("train", scale["train_images"], 2000), ("val", scale["val_images"], 3000)):
        folder = os.path.join(out, "data", split)
        json_path = os.path.join(folder, "annotations.json")
        if not os.path.exists(json_path):
            make_scene_coco(folder, num_images=count, image_size=128, seed=seed, **SCENES)
        data[split] = (json_path, os.path.join(folder, "images"))
    return data


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


def run_arm(arm, seed, out, data, scale, py, keep_checkpoints=False, device="cpu", workers=2, pretrain_opts=()):
    arm_dir = os.path.join(out, f"{arm}_seed{seed}")
    result_path = os.path.join(arm_dir, "result.json")
    if os.path.exists(result_path):  # finished earlier: the study resumes where it stopped
        with open(result_path) as f:
            result = json.load(f)
        missing = [probe for probe in PROBES if f"{probe}_chance" not in result]
        if missing:
            # Finished before these probes (or their floors) existed: run them (seconds) on the kept weights.
            print(f"   adding the probes {missing} to {arm_dir}", flush=True)
            run_probes(arm, seed, arm_dir, result, data, scale, py, device, missing)
            atomic_write_json(result_path, result)
        return result
    if os.path.isdir(arm_dir):
        # An arm killed part-way restarts from scratch: its stages do not resume, and Detectron2 appends to an
        # old metrics.json, which would splice two runs into one loss curve.
        print(f"   removing the unfinished {arm_dir}", flush=True)
        shutil.rmtree(arm_dir)
    os.makedirs(arm_dir)
    result = {"arm": arm, "seed": seed, "seconds": {}}
    pretrain_images = data["pretrain"][1]
    register = coco_registrations(data)
    weights = ""
    runtime = ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", workers]
    if ARMS[arm] is not None:
        config, overrides = ARMS[arm]
        pretrain_dir = os.path.join(arm_dir, "pretrain")
        # The configs' own MAX_ITER unless the scale or --pretrain-iters sets one.
        iterations = [] if scale["pretrain_iters"] is None else ["SOLVER.MAX_ITER", scale["pretrain_iters"]]
        result["seconds"]["pretrain"] = run(
            [py, "tools/pretrain_net.py", "--config-file", config, *overrides,
             "DATASETS.IMAGE_FOLDER_REGISTER", f"('study_pretrain:{pretrain_images}',)",
             "DATASETS.COCO_JSON_REGISTER", f"({register[1]!r},)",
             "DATASETS.TRAIN", "('study_pretrain',)",
             "DATASETS.PROPOSAL_FILES_TRAIN", f"('{os.path.join(out, 'data', 'proposals.pkl')}',)",
             *iterations, "SOLVER.CHECKPOINT_PERIOD", 100000,
             "OBJPRETRAIN.HEALTH.RETRIEVAL_DATASET", "study_val",
             "OBJPRETRAIN.HEALTH.RETRIEVAL_PERIOD", scale["retrieval_period"],
             "SEED", seed, "OUTPUT_DIR", pretrain_dir, *runtime, *scale.get("pretrain_opts", ()), *pretrain_opts],
            os.path.join(arm_dir, "pretrain.log"))
        metrics = os.path.join(pretrain_dir, "metrics.json")
        result["pretrain_loss_curve"] = loss_curve(metrics)
        result["health_curves"] = metric_curves(metrics, ("health/", "total_loss", "loss_"))
        with open(os.path.join(pretrain_dir, "health_summary.json")) as f:
            result["health"] = json.load(f)
        checkpoint = os.path.join(pretrain_dir, "model_final.pth")
        weights = os.path.join(arm_dir, "converted.pkl")
        run([py, "tools/convert_ckpt.py", checkpoint, weights, "--to", "d2-fpn"], os.path.join(arm_dir, "convert.log"))
    run_probes(arm, seed, arm_dir, result, data, scale, py, device)
    iters = scale["finetune_iters"]
    if iters:
        finetune(arm_dir, result, weights, data, iters, seed, py, runtime)
    atomic_write_json(result_path, result)  # the marker that this arm is done: never half-written
    if not keep_checkpoints:
        remove_training_checkpoints(arm_dir)
    return result


def finetune(arm_dir, result, weights, data, iters, seed, py, runtime):
    """Faster R-CNN R18-FPN fine-tuning from ``weights`` ("" = random init) and its COCO AP, into ``result``."""
    register = coco_registrations(data)
    finetune_dir = os.path.join(arm_dir, "finetune")
    result["seconds"]["finetune"] = run(
        [py, "tools/train_net.py", "--config-file", FINETUNE_CONFIG, "--register-coco", register[0],
         "--register-coco", register[1], "MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.NUM_CLASSES", 6,
         "DATASETS.TRAIN", "('study_train',)", "DATASETS.TEST", "('study_val',)",
         "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", 256, "INPUT.MIN_SIZE_TEST", 256,
         "INPUT.MAX_SIZE_TEST", 256, "SOLVER.MAX_ITER", iters, "SOLVER.STEPS", f"({iters * 2 // 3}, {iters * 8 // 9})",
         "SOLVER.WARMUP_ITERS", min(50, iters), "SOLVER.CHECKPOINT_PERIOD", iters + 1, "SEED", seed,
         "OUTPUT_DIR", finetune_dir, *runtime],
        os.path.join(arm_dir, "finetune.log"))
    result["bbox_AP"] = last_metric(os.path.join(finetune_dir, "metrics.json"), "bbox/AP")
    result["bbox_AP50"] = last_metric(os.path.join(finetune_dir, "metrics.json"), "bbox/AP50")


def coco_registrations(data):
    """``name:json:image_root`` of the labelled splits, as train_net.py --register-coco and
    DATASETS.COCO_JSON_REGISTER take them."""
    return [f"study_{split}:{data[split][0]}:{data[split][1]}" for split in ("train", "val")]


def run_probes(arm, seed, arm_dir, result, data, scale, py, device, probes=tuple(PROBES)):
    """Runs ``probes`` (names of :data:`PROBES`; default all) on the arm's converted weights (random init: a fresh
    ResNet drawn with ``seed``), in one process, and records score, chance level and seconds in ``result``."""
    config = ARMS[arm][0] if ARMS[arm] is not None else PROBE_CONFIG_RANDOM_INIT
    weights = ["--random-init"] if ARMS[arm] is None else ["--weights", os.path.join(arm_dir, "converted.pkl")]
    register = coco_registrations(data)
    paths = [os.path.join(arm_dir, f"{probe}.json") for probe in probes]
    result["seconds"]["probes"] = result["seconds"].get("probes", 0.0) + run(
        [py, "tools/linear_eval.py", "--config-file", config, *weights, "--seed", seed,
         "--train-dataset", "study_train", "--test-dataset", "study_val", "--epochs", scale["probe_epochs"],
         *(a for p, path in zip(probes, paths) for a in ("--probe", f"{PROBES[p][0]},{PROBES[p][1]},{PROBES[p][1]},{path}")),
         "--device", device, "DATASETS.COCO_JSON_REGISTER", f"({register[0]!r}, {register[1]!r})"],
        os.path.join(arm_dir, "probes.log"))
    for probe, path in zip(probes, paths):
        _, _, metric, chance = PROBES[probe]
        with open(path) as f:
            probe_result = json.load(f)
        result[probe] = 100.0 * probe_result[metric]  # in percent, like COCO AP
        result[f"{probe}_chance"] = 100.0 * probe_result[chance]


def remove_training_checkpoints(arm_dir):
    """Delete an arm's ``.pth`` files once its result is recorded; its converted.pkl stays.

    Each arm writes about 250 MB of pretraining and fine-tuning checkpoints (optimizer state included) that the
    study never reads again; fifteen arms would fill a small disk.
    """
    for stage in ("pretrain", "finetune"):
        folder = os.path.join(arm_dir, stage)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.endswith(".pth") or name == "last_checkpoint":
                    os.remove(os.path.join(folder, name))


def run_study(out, scale, arms, py=sys.executable, keep_checkpoints=False, device="cpu", workers=2, pretrain_opts=(),
              prepare_only=False):
    """Makes the data and proposals under ``out`` and runs every arm and seed of ``scale``; returns the results
    (``[]`` with ``prepare_only``). The summary is objpretrain.study.summary's."""
    os.makedirs(out, exist_ok=True)
    data = make_data(out, scale)
    proposals = os.path.join(out, "data", "proposals.pkl")
    if not os.path.exists(proposals):
        run([py, "tools/generate_proposals.py", "--images", data["pretrain"][1], "--output", proposals,
             "--no-progress"], os.path.join(out, "proposals.log"))
    if prepare_only:
        return []
    results = []
    for seed in scale["seeds"]:
        for arm in arms:
            print(f"== {arm}, seed {seed}", flush=True)
            results.append(run_arm(arm, seed, out, data, scale, py, keep_checkpoints, device, workers, pretrain_opts))
    return results
