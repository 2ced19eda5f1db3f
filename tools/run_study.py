#!/usr/bin/env python
"""A small, seeded reproduction study of the orderings SoCo and OAC claim (``make study``), with every arm's health.

Arms, each pretrained on the same unlabelled multi-object scenes in the CPU learning regime of the demo configs
(docs/results.md: weak augmentation, warm-up then cosine, BN heads, EMA 0.99):

- ``random_init``: no pretraining;
- ``byol_whole_image``: BYOL on two random crops of the whole image (SoCo's image-level baseline);
- ``soco``: SoCo with FPN, the 4conv1fc box head and scale-aware assignment;
- ``moco_scene``: MoCo-v2 with scene-scene crops (OAC's baseline);
- ``moco_obj_obj_dilate``: MoCo-v2 with obj-obj+dilate crops and separate heads (OAC §4.1).

Pretraining runs with the health monitors (objpretrain/engine/health.py): spread of the embeddings, losses beside
their collapse values, backbone movement and view retrieval on the held-out split, against the initial weights.
Each pretrained model is converted with tools/convert_ckpt.py (``--to d2-fpn``) and every arm, random init
included, is measured on frozen features with tools/linear_eval.py, BatchNorm statistics re-estimated at each
probe's resolution: view retrieval on held-out scenes (the pretext task), classification of each annotated object
(top-1) and multi-label image classification (mAP, OAC's protocol), each beside its chance level. With
``--finetune-iters N`` each arm is also fine-tuned as a Faster R-CNN R18-FPN (COCO AP); at 400 CPU iterations that
AP is dominated by the batch order, so the full CPU study leaves it out. Seeds are repeated and reported as mean
± std. Every stage is one of the project's own commands, printed before it runs; results are written as JSON, a
Markdown table and plots (the monitors' curves included).

Claims checked (see docs/results.md), each with Welch's t-test over seeds on every metric: every pretrained arm
> random init; SoCo > whole-image BYOL > random init (SoCo Table 4); obj-obj+dilate > scene cropping on
multi-object images (OAC Tables 4 to 6).

    python tools/run_study.py --output output/study                 # the full study (about 1 h on 2 cores)
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
from scipy.stats import ttest_ind

from objpretrain.utils.atomic_io import atomic_write_bytes, atomic_write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    # Each annotated object classified from its RoIAligned res4 + res5, at the finetuning scale (256 px): the
    # object-level features that SoCo and OAC claim to improve, measured without a detector's training noise.
    "object_probe_top1": ("objects", 256, "top1", "chance_top1"),
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
        sys.exit(f"study stage failed (exit {result.returncode}), log {log}:\n{tail}")
    return time.time() - start


# The scenes (objpretrain.data.datasets.scenes): 8-16 objects of mixed classes, class-determined textures, colour
# random per object, so whole-image crops mix classes while object crops isolate one (docs/results.md).
SCENES = dict(min_objects=8, max_objects=16, clutter=16, class_textures=True, side_range=(14, 36))


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
        if not all(f"{probe}_chance" in result for probe in PROBES):
            # Finished before the probes had their floors: redo the probes (seconds) from the kept weights.
            print(f"   adding the probes to {arm_dir}", flush=True)
            run_probes(arm, seed, arm_dir, result, data, scale, py, device)
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


def run_probes(arm, seed, arm_dir, result, data, scale, py, device):
    """Runs every probe of :data:`PROBES` on the arm's converted weights (random init: a fresh ResNet drawn with
    ``seed``) and records score, chance level and seconds in ``result``."""
    config = ARMS[arm][0] if ARMS[arm] is not None else PROBE_CONFIG_RANDOM_INIT
    weights = ["--random-init"] if ARMS[arm] is None else ["--weights", os.path.join(arm_dir, "converted.pkl")]
    register = coco_registrations(data)
    for probe, (task, size, metric, chance) in PROBES.items():
        path = os.path.join(arm_dir, f"probe_{task}.json")
        result["seconds"][probe] = run(
            [py, "tools/linear_eval.py", "--config-file", config, *weights, "--seed", seed,
             "--train-dataset", "study_train", "--test-dataset", "study_val", "--task", task,
             "--resize", size, "--crop", size, "--epochs", scale["probe_epochs"], "--output", path,
             "--device", device, "DATASETS.COCO_JSON_REGISTER", f"({register[0]!r}, {register[1]!r})"],
            os.path.join(arm_dir, f"probe_{task}.log"))
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


def _mean_std(values):
    """Mean and sample standard deviation (0 for a single value) of the finite ``values``; None when empty."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


# The metrics of the summary: result key -> its name in the tables.
METRICS = {"view_retrieval": "view retrieval top-1", "object_probe_top1": "object probe top-1",
           "linear_probe_map": "image probe mAP", "bbox_AP": "COCO box AP"}
# The orderings checked, (better, worse): every pretrained arm against random init (does it learn at all?), then
# what the papers claim: SoCo Table 4 (with Table 1's BYOL baseline), OAC Tables 4-6.
CLAIMS = [(arm, "random_init") for arm in ARMS if arm != "random_init"] + [
    ("soco", "byol_whole_image"), ("moco_obj_obj_dilate", "moco_scene")]


def compare(better, worse):
    """Difference of means and Welch's two-sided t-test p-value (None with fewer than 2 seeds on a side)."""
    better, worse = np.asarray(better, float), np.asarray(worse, float)
    difference = float(better.mean() - worse.mean())
    if min(len(better), len(worse)) < 2:
        return difference, None
    p_value = float(ttest_ind(better, worse, equal_var=False).pvalue)
    return difference, (1.0 if np.isnan(p_value) else p_value)  # nan: both sides constant and equal


def verdict(difference, p_value, alpha=0.05):
    if p_value is None:
        return "too few seeds"
    if p_value >= alpha:
        return "not separated"
    return "holds" if difference > 0 else "reversed"


def summarize(results, out):
    """Writes summary.json, results_table.md and the plots for the finished ``results``; returns (rows, table).

    Each row has, for every metric of :data:`METRICS`, ``<metric>_per_seed``, ``_mean``, ``_std`` and, for the
    probes, ``_chance``; summary.json also lists every claim of :data:`CLAIMS` with its test per metric.
    """
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in results)]  # bbox_AP only when fine-tuned
    rows = []
    for arm in ARMS:
        arm_results = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        if not arm_results:
            continue
        row = {"arm": arm, "seeds": [r["seed"] for r in arm_results]}
        for name, value in health_values(arm_results).items():
            row[f"health_{name}_per_seed"] = value
            row[f"health_{name}_mean"], row[f"health_{name}_std"] = _mean_std(value)
        for metric in metrics:
            values = [r.get(metric) for r in arm_results]
            row[f"{metric}_per_seed"] = values
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(values)
            chances = [r[f"{metric}_chance"] for r in arm_results if f"{metric}_chance" in r]
            if chances:
                row[f"{metric}_chance"] = float(np.mean(chances))
        rows.append(row)
    by_arm = {r["arm"]: r for r in rows}
    claims = []
    for better, worse in CLAIMS:
        if better in by_arm and worse in by_arm:
            for metric in metrics:
                values = [[v for v in by_arm[a][f"{metric}_per_seed"] if v is not None] for a in (better, worse)]
                if all(values):
                    difference, p_value = compare(*values)
                    claims.append({"claim": f"{better} > {worse}", "metric": metric, "difference": difference,
                                   "p_value": p_value, "verdict": verdict(difference, p_value)})
    atomic_write_json(os.path.join(out, "summary.json"), {"arms": rows, "claims": claims}, indent=1)
    table = _markdown(rows, claims, metrics)
    atomic_write_bytes(os.path.join(out, "results_table.md"), (table + "\n").encode())
    _plot(results, rows, out, metrics)
    _plot_health(results, out)
    return rows, table


# Health values of the summary: name -> how to read it from an arm's health_summary.json (None when absent).
HEALTH_COLUMNS = {
    # the last embedding of the chain: the predictor where there is one (BYOL, SoCo), else the projector
    "cosine_to_mean": lambda h: h.get("predictor_cosine_to_mean", h.get("projector_cosine_to_mean")),
    "spread": lambda h: h.get("predictor_spread", h.get("projector_spread")),
    "loss_over_collapse": lambda h: _mean_or_none([v for k, v in h.items() if k.endswith("_over_collapse")]),
    "res5_moved": lambda h: h.get("move_res5_since_start"),
    "stem_moved": lambda h: h.get("move_stem_since_start"),
    "retrieval_monitor": lambda h: None if h.get("view_retrieval") is None else 100 * h["view_retrieval"],
    "retrieval_monitor_initial": lambda h: (None if h.get("view_retrieval_initial") is None
                                            else 100 * h["view_retrieval_initial"]),
}


def _mean_or_none(values):
    return float(np.mean(values)) if values else None


def health_values(arm_results):
    """``{column: [value per seed]}`` of :data:`HEALTH_COLUMNS` for the arm's results that have a health summary."""
    summaries = [r["health"] for r in arm_results if "health" in r]
    if not summaries:
        return {}
    return {name: [read(h) for h in summaries] for name, read in HEALTH_COLUMNS.items()}


def _markdown(rows, claims, metrics):
    def cell(row, metric, digits):
        if row[f"{metric}_mean"] is None:
            return "n/a", "n/a"
        per_seed = ", ".join("-" if v is None else f"{v:.{digits}f}" for v in row[f"{metric}_per_seed"])
        return f"{row[f'{metric}_mean']:.{digits}f} ± {row[f'{metric}_std']:.{digits}f}", per_seed

    header = ["arm", "seeds"]
    for metric, name in ((m, METRICS[m]) for m in metrics):
        chances = {round(r[f"{metric}_chance"], 1) for r in rows if f"{metric}_chance" in r}
        chance = f" (chance {chances.pop():.1f})" if len(chances) == 1 else ""
        header += [f"{name}{chance}, mean ± std", "per seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        cells = [r["arm"], str(len(r["seeds"]))]
        for metric in metrics:
            cells += cell(r, metric, 2 if metric == "bbox_AP" else 1)
        lines.append("| " + " | ".join(cells) + " |")
    health_rows = [r for r in rows if "health_cosine_to_mean_mean" in r]
    if health_rows:
        lines += ["", "| arm | final cosine to mean | final spread | loss / collapse value | res5 moved | stem moved "
                  "| view retrieval (monitor) | same, initial weights |", "|" + " --- |" * 8]
        for r in health_rows:
            values = []
            for name in HEALTH_COLUMNS:
                mean, std = r[f"health_{name}_mean"], r[f"health_{name}_std"]
                values.append("n/a" if mean is None else f"{mean:.3f} ± {std:.3f}")
            lines.append(f"| {r['arm']} | " + " | ".join(values) + " |")
    if claims:
        lines += ["", "| claim | metric | difference of means | Welch p | at p < 0.05 |",
                  "| --- | --- | --- | --- | --- |"]
        for c in claims:
            p_value = "n/a" if c["p_value"] is None else f"{c['p_value']:.3f}"
            lines.append(f"| {c['claim']} | {METRICS[c['metric']]} | {c['difference']:+.2f} | {p_value} | "
                         f"{c['verdict']} |")
    return "\n".join(lines)


def finished_results(out):
    """The result.json of every arm and seed that finished under ``out``."""
    results = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "result.json")
        if os.path.isfile(path):
            with open(path) as f:
                results.append(json.load(f))
    return results


def _plot(results, rows, out, metrics):
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
    if ax.lines:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
    names = [r["arm"] for r in rows]
    for ax, (metric, name) in zip(axes[0], ((m, METRICS[m]) for m in metrics)):
        means = [np.nan if r[f"{metric}_mean"] is None else r[f"{metric}_mean"] for r in rows]
        stds = [0.0 if r[f"{metric}_std"] is None else r[f"{metric}_std"] for r in rows]
        ax.bar(names, means, yerr=stds, capsize=4)
        for i, r in enumerate(rows):  # every seed as a dot: with 3 seeds the spread says more than a bar
            seeds = [v for v in r[f"{metric}_per_seed"] if v is not None]
            ax.plot([i] * len(seeds), seeds, "k.", markersize=4)
        chances = [r[f"{metric}_chance"] for r in rows if f"{metric}_chance" in r]
        if chances:
            ax.axhline(np.mean(chances), color="grey", linestyle="--", label="chance")
            ax.legend(fontsize=7)
        ax.set_title(f"{name} (mean ± std)", fontsize=9)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ap_per_arm.png"), dpi=120)
    plt.close(fig)


# Panels of health_curves.png: (title, metric key candidates in order of preference, y label).
HEALTH_PANELS = [
    ("embeddings: cosine to the batch-mean direction (1 = collapsed)",
     ("health/predictor_cosine_to_mean", "health/projector_cosine_to_mean"), "cosine"),
    ("loss / its collapse value", ("health/loss_moco_over_collapse", "health/loss_byol_over_collapse",
                                   "health/loss_v1_v2_over_collapse"), "ratio"),
    ("res5 weights moved since iteration 0", ("health/move_res5_since_start",), "relative change"),
    ("view retrieval on held-out scenes", ("health/view_retrieval",), "top-1"),
]


def _plot_health(results, out):
    """health_curves.png: the monitors of every pretrained arm and seed over the iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in results if r.get("health_curves")]
    if not curves:
        return
    colours = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    fig, axes = plt.subplots(1, len(HEALTH_PANELS), figsize=(4.5 * len(HEALTH_PANELS), 4))
    for ax, (title, keys, label) in zip(axes, HEALTH_PANELS):
        for r in curves:
            key = next((k for k in keys if k in r["health_curves"]), None)
            if key is None:
                continue
            iters, values = r["health_curves"][key]
            ax.plot(iters, values, color=colours[r["arm"]], alpha=0.8,
                    label=r["arm"] if r["seed"] == min(c["seed"] for c in curves) else None)
            if key == "health/view_retrieval" and "health/view_retrieval_initial" in r["health_curves"]:
                ax.axhline(r["health_curves"]["health/view_retrieval_initial"][1][0], color=colours[r["arm"]],
                           linestyle=":", alpha=0.6)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6)
    axes[-1].text(0.02, 0.02, "dotted: initial weights", transform=axes[-1].transAxes, fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "health_curves.png"), dpi=120)
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
    parser.add_argument("--pretrain-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides for every pretraining, e.g. SOLVER.IMS_PER_BATCH 256 (the learning "
                             "configs scale their lr with the square root of the batch)")
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
            results.append(run_arm(arm, seed, out, data, scale, py, args.keep_checkpoints, args.device, args.workers,
                                   args.pretrain_opts))
    rows, table = summarize(results, out)
    wall = time.time() - start
    atomic_write_json(os.path.join(out, "study_info.json"),
                      {"scale": scale, "arms": args.arms, "device": args.device, "pretrain_opts": args.pretrain_opts,
                       "wall_seconds": wall}, indent=1)
    print(table)
    print(f"study finished in {wall / 60:.1f} min; results in {out}")
    return rows


if __name__ == "__main__":
    main()
