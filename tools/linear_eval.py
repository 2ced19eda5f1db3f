#!/usr/bin/env python
"""Linear probe on frozen pooled features (OAC §3, Tables 2-4: linear evaluation on OHMS, mAP over classes).
The logic is in ``objpretrain.evaluation`` (frozen_features, linear_probe, metrics); this tool parses and runs.

The ResNet of a pretraining checkpoint (``online_network.backbone.*``), of a converted Detectron2 ``.pkl``
or of a torchvision-layout ``.pth`` (anything ``objpretrain.checkpoint`` reads) is frozen; every image is
resized (shorter side ``--resize``), centre-cropped (``--crop``), and its res5 map global-average-pooled.
The features are extracted once and cached (``--cache-dir``), then a linear layer is trained on them:

- multi-label (OHMS: each dict's ``labels``; COCO-style sets: the categories of ``annotations``):
  binary cross-entropy, reported as mAP over the classes with a positive test image;
- single-label (a dict's ``label``, else the top folder of its ``image_id``, as in ImageNet-style trees):
  cross-entropy, reported as top-1 accuracy;
- view retrieval (``--task retrieval``): no probe is trained; two augmented views of each test image
  (``objpretrain.evaluation.view_retrieval``, at ``--crop`` px) and the top-1 rate of finding one from the other,
  the pretext task of image-level SSL measured on held-out images, as the pretraining health monitor does;
- objects (``--task objects``, COCO-style sets): every annotated box is one sample, its features RoIAligned
  from res4 and res5 of the whole resized image; cross-entropy over the categories, top-1. Not a protocol of
  either paper: it asks directly whether the frozen features tell objects apart, which is what object-level
  pretraining claims to improve, and it has far less noise than a short detector fine-tuning.

``--protocol official`` runs OAC's released linear evaluation instead (objpretrain/evaluation/official_linear_eval.py:
a linear layer under the frozen ResNet trained on fresh RandomResizedCrop + flip views every epoch, SGD lr 30, steps at
60 % and 80 % of the epochs, the checkpoint's BatchNorm statistics) and reports the batch-averaged mAP of that script,
which the paper's tables compare, beside the whole-set mAP.

Every result also reports the chance level (a constant score), and ``--random-init`` probes a randomly
initialized ResNet: the two floors a pretrained backbone has to clear.

BatchNorm (``--bn-stats``): by default every backbone, random init included, has its BatchNorm statistics
re-estimated at the probe's own resolution, on up to ``--bn-images`` training images preprocessed as the probe
preprocesses them (``objpretrain.evaluation.view_retrieval.reestimate_batchnorm``), before features are
extracted in eval mode. Pretraining views are smaller than the probe's images (48-96 px against 128-256 px), and a
random init's statistics are the unit ones; ``--bn-stats checkpoint`` keeps the weights' own statistics. The result
records which was used.

Runs on CPU for small sets. With ``--num-gpus N`` (and ``--num-machines`` / ``--machine-rank`` / ``--dist-url``,
as tools/pretrain_net.py) Detectron2's ``launch`` starts N processes (NCCL on GPUs, gloo on a CPU) that extract the
features of one block of images each; rank 0 re-estimates the BatchNorm statistics and sends them to the others,
and writes the result, which equals one process's. Example:
    python tools/linear_eval.py --config-file configs/oac/moco_v2_r50_obj_obj_dilate.yaml \\
        --weights output/oac/moco_v2_r50_obj_obj_dilate/model_final.pth --num-gpus 8 \\
        --train-dataset ohms_train --test-dataset ohms_val --output output/linear_eval_ohms.json
"""
import argparse
import json
import logging
import sys

import objpretrain  # noqa: F401  (first: registers components and silences a dependency's import warning)

# isort: split
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from objpretrain.config import get_pretrain_cfg
from objpretrain.data.datasets import register_datasets_from_cfg
from objpretrain.engine.defaults import launch
from objpretrain.evaluation.frozen_features import build_frozen_backbone
from objpretrain.evaluation.linear_probe import TASKS, ProbeSettings, linear_probe_result, retrieval_result
from objpretrain.evaluation.official_linear_eval import OFFICIAL_LR, official_linear_eval_result
from objpretrain.utils.atomic_io import atomic_write


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the pretraining config (ResNet depth, pixel mean/std)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="pretraining .pth, converted .pkl or torchvision .pth")
    weights.add_argument("--random-init", action="store_true",
                         help="probe a randomly initialized ResNet instead (the floor for pretrained weights)")
    parser.add_argument("--unsafe-full-unpickle", action="store_true",
                        help="read --weights that hold Python objects (a released MoCo .pth.tar) with the full "
                             "unpickler, which runs any code the file holds: only for a file you trust")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialization and of the probe")
    parser.add_argument("--train-dataset", required=True)
    parser.add_argument("--test-dataset", required=True)
    parser.add_argument("--task", choices=TASKS, default="auto",
                        help="auto: multi-label when the dicts have 'labels' or 'annotations'; objects: classify "
                             "each annotated box from its RoIAligned res4 + res5 features (top-1); retrieval: find "
                             "each test image's second augmented view (top-1), no probe trained")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    # Several probes of one backbone in one process, which saves its start-up (about 5 s on a CPU).
    parser.add_argument("--probe", action="append", metavar="TASK,RESIZE,CROP,OUTPUT",
                        help="one probe (repeatable); replaces --task/--resize/--crop/--output")
    parser.add_argument("--batch-size", type=int, default=64, help="feature extraction batch")
    parser.add_argument("--protocol", choices=("ours", "official"), default="ours",
                        help="ours: cached features, Adam; official: OAC's released main_lincls.py (fresh crops each "
                             "epoch, SGD lr 30, steps at 60 %% and 80 %%, the checkpoint's BatchNorm statistics, the "
                             "batch-averaged mAP beside the whole-set one)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, help="default: 1e-3 (ours), 30 (official)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--probe-batch-size", type=int, default=256)
    parser.add_argument("--bn-stats", choices=("reestimate", "checkpoint"),
                        help="re-estimate BatchNorm statistics at the probe's resolution (default of ours), or keep "
                             "the weights' own (default of the official protocol)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (official protocol)")
    parser.add_argument("--bn-images", type=int, default=256, help="training images for the re-estimation")
    parser.add_argument("--cache-dir", help="cache extracted features here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="write the result as JSON here")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (Detectron2's launch)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto", help="tcp://host:port of machine 0 with several machines")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    args.probes = _probes(parser, args)
    official = args.protocol == "official"
    args.lr = args.lr if args.lr is not None else OFFICIAL_LR if official else 1e-3
    args.bn_stats = args.bn_stats or ("checkpoint" if official else "reestimate")
    if args.num_gpus * args.num_machines == 1:
        return evaluate(args)  # in this process, so that a caller gets the result
    launch(evaluate, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return True


def _probes(parser, args):
    """[(task, resize, crop, output or None)]: ``--probe`` specs, or the single probe of --task/--resize/--crop."""
    if not args.probe:
        return [(args.task, args.resize, args.crop, args.output)]
    probes = []
    for spec in args.probe:
        fields = spec.split(",")
        if len(fields) != 4 or fields[0] not in TASKS or not (fields[1].isdigit() and fields[2].isdigit()):
            parser.error(f"--probe {spec!r}: expected TASK,RESIZE,CROP,OUTPUT with TASK one of {TASKS}")
        probes.append((fields[0], int(fields[1]), int(fields[2]), fields[3]))
    return probes


def evaluate(args):
    """One rank's share of the evaluation; rank 0 prints, writes ``--output`` and returns the result (a list of
    results with several probes)."""
    logging.basicConfig(level=logging.INFO if comm.is_main_process() else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and comm.get_world_size() > 1:
        args.device = f"cuda:{comm.get_local_rank()}"
    cfg = get_pretrain_cfg(args.config_file, args.opts)
    register_datasets_from_cfg(cfg)
    datasets = {"train": args.train_dataset, "test": args.test_dataset}
    dicts = {split: DatasetCatalog.get(name) for split, name in datasets.items()}
    results = []
    for task, resize, crop, output in args.probes:
        options = {**vars(args), "task": task, "resize": resize, "crop": crop}
        settings = ProbeSettings(**{name: options[name] for name in ProbeSettings.__dataclass_fields__})
        # A fresh backbone per probe: the BatchNorm re-estimation changes it for the probe's resolution.
        backbone = build_frozen_backbone(cfg, args.weights, args.seed, args.unsafe_full_unpickle)
        result = _run_probe(backbone, cfg, args, datasets, dicts, settings)
        if result is None:  # not rank 0
            continue
        if output:
            atomic_write(output, lambda f: f.write(json.dumps(result, indent=2).encode()))
        results.append(result)
    if not comm.is_main_process():
        return None
    return results[0] if len(results) == 1 else results


def _run_probe(backbone, cfg, args, datasets, dicts, settings):
    if settings.protocol == "official":
        result = official_linear_eval_result(backbone, cfg, args.weights, datasets, dicts, settings)
        print(f"official linear evaluation: batch-averaged mAP {100 * result['batch_mAP']:.2f}, whole-set mAP "
              f"{100 * result['mAP']:.2f} (chance {100 * result['chance_mAP']:.2f})")
        return result
    if settings.task == "retrieval":
        if not comm.is_main_process():
            return None  # 128-1000 images: not worth splitting
        result = retrieval_result(backbone, cfg, args.weights, args.test_dataset, dicts["test"], settings)
        print(f"view retrieval top-1: {100 * result['top1']:.2f} (chance {100 * result['chance_top1']:.2f})")
        return result
    result = linear_probe_result(backbone, cfg, args.weights, datasets, dicts, settings)
    if result is None:  # not rank 0
        return None
    if "mAP" in result:
        print(f"linear probe mAP: {100 * result['mAP']:.2f} (chance {100 * result['chance_mAP']:.2f})")
    else:
        print(f"linear probe top-1: {100 * result['top1']:.2f} (chance {100 * result['chance_top1']:.2f})")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
