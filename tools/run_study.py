#!/usr/bin/env python
"""A small, seeded reproduction study of the orderings SoCo and OAC claim (``make study``).

Arms, each pretrained on the same unlabelled multi-object scenes and fine-tuned the same way:

- ``random_init``: no pretraining (the detector trains from scratch);
- ``byol_whole_image``: BYOL on two random crops of the whole image (SoCo's image-level baseline);
- ``soco``: SoCo with FPN, the 4conv1fc box head and scale-aware assignment;
- ``moco_scene``: MoCo-v2 with scene-scene crops (OAC's baseline);
- ``moco_obj_obj_dilate``: MoCo-v2 with obj-obj+dilate crops and separate heads (OAC §4.1).

Each pretrained model is converted with tools/convert_ckpt.py (``--to d2-fpn``: image-level models give the
bottom-up ResNet only, as in the papers' transfer protocol), fine-tuned as a Faster R-CNN R18-FPN with
tools/train_net.py and evaluated with COCO AP; every pretrained arm also gets a multi-label linear probe (mAP)
with tools/linear_eval.py. Seeds are repeated and reported as mean ± std. Every stage is one of the
project's own commands, printed before it runs; results are written as JSON, a Markdown table and plots.

Claims checked (see docs/results.md): SoCo > whole-image BYOL > random init on detection transfer
(SoCo Table 4); obj-obj+dilate > scene cropping on multi-object images (OAC Tables 4 to 6).

    python tools/run_study.py --output output/study                 # the full study (about 2 h on 2 cores)
    python tools/run_study.py --output output/study --seeds 0       # one seed of it
    python tools/run_study.py --output output/study_smoke --smoke   # one seed, a few iterations per arm
    python tools/run_study.py --output output/study --summarize-only  # tables and plots of what finished
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

from objpretrain.utils.atomic_io import atomic_write_bytes, atomic_write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_OAC_PRETEXT_OFF = ["MODEL.OAC.LAMBDA_ROT", "0.0", "MODEL.OAC.LAMBDA_LOC", "0.0"]
# name -> (pretraining config, overrides); None means no pretraining.
ARMS = {
    "random_init": None,
    "byol_whole_image": (
        "configs/demo/oac_byol_r18_demo.yaml",
        ["INPUT.OAC.CROP_MODE", "scene", "MODEL.OAC.SEPARATE_HEADS", "False"] + _OAC_PRETEXT_OFF,
    ),
    "soco": ("configs/demo/soco_r18_fpn_demo.yaml", []),
    "moco_scene": (
        "configs/demo/oac_moco_r18_demo.yaml",
        ["INPUT.OAC.CROP_MODE", "scene", "MODEL.OAC.SEPARATE_HEADS", "False"] + _OAC_PRETEXT_OFF,
    ),
    "moco_obj_obj_dilate": (
        "configs/demo/oac_moco_r18_demo.yaml",
        ["INPUT.OAC.CROP_MODE", "obj-obj+dilate", "MODEL.OAC.SEPARATE_HEADS", "True"] + _OAC_PRETEXT_OFF,
    ),
}
FINETUNE_CONFIG = "configs/demo/finetune_trees_r18_fpn.yaml"

SCALES = {
    # pretrain images, finetune train / val images, pretraining and finetuning iterations, linear-probe epochs
    # Sized for about 2 hours on 2 idle CPU cores (docs/results.md has the measured wall time).
    "full": dict(pretrain_images=1024, train_images=256, val_images=128, pretrain_iters=300,
                 finetune_iters=400, probe_epochs=100, seeds=(0, 1, 2)),
    "smoke": dict(pretrain_images=16, train_images=8, val_images=8, pretrain_iters=4,
                  finetune_iters=4, probe_epochs=2, seeds=(0,)),
}


def run(cmd, log):
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    start = time.time()
    with open(log, "w") as f:
        result = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        sys.exit(f"study stage failed (exit {result.returncode}), log {log}:\n{tail}")
    return time.time() - start


def make_data(out, scale):
    from objpretrain.data.datasets.scenes import make_scene_coco

    # Three disjoint draws of the same scene distribution (different generator seeds).
    data = {}
    for split, count, seed in (("pretrain", scale["pretrain_images"], 1000),
                               ("train", scale["train_images"], 2000), ("val", scale["val_images"], 3000)):
        folder = os.path.join(out, "data", split)
        json_path = os.path.join(folder, "annotations.json")
        if not os.path.exists(json_path):
            make_scene_coco(folder, num_images=count, image_size=128, seed=seed)
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


def loss_curve(metrics_json):
    iters, losses = [], []
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            if "total_loss" in record:
                iters.append(record["iteration"])
                losses.append(record["total_loss"])
    return iters, losses


def run_arm(arm, seed, out, data, scale, py, keep_checkpoints=False, device="cpu", workers=2):
    arm_dir = os.path.join(out, f"{arm}_seed{seed}")
    result_path = os.path.join(arm_dir, "result.json")
    if os.path.exists(result_path):  # finished earlier: the study resumes where it stopped
        with open(result_path) as f:
            return json.load(f)
    if os.path.isdir(arm_dir):
        # An arm killed part-way restarts from scratch: its stages do not resume, and Detectron2 appends to an
        # old metrics.json, which would splice two runs into one loss curve.
        print(f"   removing the unfinished {arm_dir}", flush=True)
        shutil.rmtree(arm_dir)
    os.makedirs(arm_dir)
    result = {"arm": arm, "seed": seed, "seconds": {}}
    pretrain_images = data["pretrain"][1]
    register = [f"study_train:{data['train'][0]}:{data['train'][1]}", f"study_val:{data['val'][0]}:{data['val'][1]}"]
    weights = ""
    runtime = ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", workers]
    if ARMS[arm] is not None:
        config, overrides = ARMS[arm]
        pretrain_dir = os.path.join(arm_dir, "pretrain")
        result["seconds"]["pretrain"] = run(
            [py, "tools/pretrain_net.py", "--config-file", config, *overrides,
             "DATASETS.IMAGE_FOLDER_REGISTER", f"('study_pretrain:{pretrain_images}',)",
             "DATASETS.TRAIN", "('study_pretrain',)",
             "DATASETS.PROPOSAL_FILES_TRAIN", f"('{os.path.join(out, 'data', 'proposals.pkl')}',)",
             "SOLVER.MAX_ITER", scale["pretrain_iters"], "SOLVER.CHECKPOINT_PERIOD", scale["pretrain_iters"] + 1,
             "SEED", seed, "OUTPUT_DIR", pretrain_dir, *runtime],
            os.path.join(arm_dir, "pretrain.log"))
        result["pretrain_loss_curve"] = loss_curve(os.path.join(pretrain_dir, "metrics.json"))
        checkpoint = os.path.join(pretrain_dir, "model_final.pth")
        weights = os.path.join(arm_dir, "converted.pkl")
        run([py, "tools/convert_ckpt.py", checkpoint, weights, "--to", "d2-fpn"], os.path.join(arm_dir, "convert.log"))
        probe_path = os.path.join(arm_dir, "linear_probe.json")
        result["seconds"]["linear_probe"] = run(
            [py, "tools/linear_eval.py", "--config-file", config, "--weights", checkpoint,
             "--train-dataset", "study_train", "--test-dataset", "study_val", "--task", "multilabel",
             "--resize", 128, "--crop", 128, "--epochs", scale["probe_epochs"], "--output", probe_path,
             "--device", device, "DATASETS.COCO_JSON_REGISTER", f"({register[0]!r}, {register[1]!r})"],
            os.path.join(arm_dir, "linear_probe.log"))
        with open(probe_path) as f:
            result["linear_probe_map"] = 100.0 * json.load(f)["mAP"]  # in percent, like COCO AP
    finetune_dir = os.path.join(arm_dir, "finetune")
    iters = scale["finetune_iters"]
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
    atomic_write_json(result_path, result)  # the marker that this arm is done: never half-written
    if not keep_checkpoints:
        remove_training_checkpoints(arm_dir)
    return result


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


def _mean_std(values):
    """Mean and sample standard deviation (0 for a single value) of the finite ``values``; None when empty."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def summarize(results, out):
    """Writes summary.json, results_table.md and the plots for the finished ``results``; returns (rows, table)."""
    rows = []
    for arm in ARMS:
        arm_results = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        if not arm_results:
            continue
        ap = [r["bbox_AP"] for r in arm_results]
        probe = [r.get("linear_probe_map") for r in arm_results]
        ap_mean, ap_std = _mean_std(ap)
        probe_mean, probe_std = _mean_std(probe)
        rows.append({"arm": arm, "seeds": [r["seed"] for r in arm_results], "bbox_AP_mean": ap_mean,
                     "bbox_AP_std": ap_std, "AP_per_seed": ap, "probe_mAP_mean": probe_mean,
                     "probe_mAP_std": probe_std, "probe_mAP_per_seed": probe})
    atomic_write_json(os.path.join(out, "summary.json"), rows, indent=1)
    lines = ["| arm | seeds | COCO box AP, mean ± std | AP per seed | linear-probe mAP, mean ± std | mAP per seed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["probe_mAP_mean"] is None:
            probe, probe_seeds = "n/a", "n/a"
        else:
            probe = f"{r['probe_mAP_mean']:.1f} ± {r['probe_mAP_std']:.1f}"
            probe_seeds = ", ".join(f"{v:.1f}" for v in r["probe_mAP_per_seed"])
        per_seed = ", ".join(f"{v:.2f}" for v in r["AP_per_seed"])
        lines.append(f"| {r['arm']} | {len(r['seeds'])} | {r['bbox_AP_mean']:.2f} ± {r['bbox_AP_std']:.2f} | "
                     f"{per_seed} | {probe} | {probe_seeds} |")
    table = "\n".join(lines)
    atomic_write_bytes(os.path.join(out, "results_table.md"), (table + "\n").encode())
    _plot(results, rows, out)
    return rows, table


def finished_results(out):
    """The result.json of every arm and seed that finished under ``out``."""
    results = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "result.json")
        if os.path.isfile(path):
            with open(path) as f:
                results.append(json.load(f))
    return results


def _plot(results, rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if "pretrain_loss_curve" in r:
            iters, losses = r["pretrain_loss_curve"]
            ax.plot(iters, losses, label=f"{r['arm']} s{r['seed']}", alpha=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("pretraining loss")
    ax.set_title("Pretraining loss per arm (each method's own loss scale)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["arm"] for r in rows]
    ax.bar(names, [r["bbox_AP_mean"] for r in rows], yerr=[r["bbox_AP_std"] for r in rows], capsize=4)
    ax.set_ylabel("COCO box AP on the scene val set")
    ax.set_title("Detection transfer (mean ± std over seeds)")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ap_per_arm.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "study"))
    parser.add_argument("--smoke", action="store_true", help="one seed, a few iterations per arm (CI)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the scale's seeds")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--pretrain-iters", type=int)
    parser.add_argument("--finetune-iters", type=int)
    parser.add_argument("--device", default="cpu", help="MODEL.DEVICE of every stage, e.g. cuda")
    parser.add_argument("--workers", type=int, default=2, help="DATALOADER.NUM_WORKERS of every stage")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each arm's .pth checkpoints (by default only its converted .pkl is kept)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the scenes and their proposals, run no arm (so arms can then run in parallel)")
    parser.add_argument("--summarize-only", action="store_true",
                        help="tabulate and plot the arms and seeds that finished under --output, run nothing")
    args = parser.parse_args(argv)
    scale = dict(SCALES["smoke" if args.smoke else "full"])
    if args.seeds:
        scale["seeds"] = tuple(args.seeds)
    if args.pretrain_iters:
        scale["pretrain_iters"] = args.pretrain_iters
    if args.finetune_iters:
        scale["finetune_iters"] = args.finetune_iters
    out = os.path.abspath(args.output)
    if args.summarize_only:
        rows, table = summarize(finished_results(out), out)
        print(table)
        return rows
    os.makedirs(out, exist_ok=True)
    py = sys.executable
    start = time.time()
    data = make_data(out, scale)
    proposals = os.path.join(out, "data", "proposals.pkl")
    if not os.path.exists(proposals):
        run([py, "tools/generate_proposals.py", "--images", data["pretrain"][1], "--output", proposals,
             "--no-progress"], os.path.join(out, "proposals.log"))
    if args.prepare_only:
        print(f"data and proposals ready in {out}")
        return []
    results = []
    for seed in scale["seeds"]:
        for arm in args.arms:
            print(f"== {arm}, seed {seed}", flush=True)
            results.append(run_arm(arm, seed, out, data, scale, py, args.keep_checkpoints, args.device, args.workers))
    rows, table = summarize(results, out)
    wall = time.time() - start
    atomic_write_json(os.path.join(out, "study_info.json"),
                      {"scale": scale, "arms": args.arms, "device": args.device, "wall_seconds": wall}, indent=1)
    print(table)
    print(f"study finished in {wall / 60:.1f} min; results in {out}")
    return rows


if __name__ == "__main__":
    main()
