#!/usr/bin/env python
"""Training-step throughput and peak memory of a pretraining config.

Times ``--iters`` steps after ``--warmup`` untimed ones, each split into data wait (next batch from the loader),
forward, backward, optimizer and target EMA update (CUDA synchronized at each boundary), and prints one JSON line:
images/s, seconds per iteration for data, the step and each phase, the data share, peak host memory (max RSS of
this process and of its live data-loader workers) and, on CUDA, peak GPU memory.

``--compare`` times, in one run, the step with per-parameter optimizer and EMA updates and per-view network calls
(the reference), with foreach (multi-tensor) updates, and with foreach updates plus one call per view size
(``MODEL.SOCO.VIEW_BATCHING per_size``; SoCo only), each with its images/s ratio to the reference::

    OMP_NUM_THREADS=2 python bench/train_step.py --config-file configs/demo/soco_r18_fpn_demo.yaml --synthetic --compare

    # CPU, the demo config with its real loader (needs datasets/demo and a proposal file, or
    # DATASETS.PROPOSAL_FILES_TRAIN "()" to use the mapper's whole-image fallback boxes)
    python bench/train_step.py --config-file configs/demo/soco_r18_fpn_demo.yaml
    # GPU, SoCo-R50-FPN at batch 64 with AMP, synthetic views (no data loading), channels-last, FLOPs and MFU
    python bench/train_step.py --config-file configs/soco_r50_fpn.yaml --device cuda --batch 64 --amp --synthetic \
        --channels-last --flops --peak-tflops 989
    # the OAC demo configs (any OAC config: the synthetic batch follows the model's mapper)
    python bench/train_step.py --config-file configs/demo/oac_moco_r18_demo.yaml --synthetic

FLOPs (``--flops``): PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` over one whole training step
(forward of online and target networks, backward of the online one), so no forward-to-step factor is assumed;
it counts matmuls and convolutions as 2 FLOPs per multiply-add. fvcore's ``FlopCountAnalysis`` (which counts one
multiply-add as one "flop" and sees only the forward) is reported beside it as a cross-check: for SoCo the step
should be about 4x fvcore's forward count (2 FLOPs per multiply-add; online + target forward, online backward
~ 2x the online forward).
MFU = step FLOPs / step time / ``--peak-tflops`` (H200 / H100 SXM dense bf16/fp16: 989 TFLOP/s).
"""
import argparse
import glob
import itertools
import json
import os
import resource
import sys
import time

import torch
from detectron2.modeling import build_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import objpretrain  # noqa: E402,F401
from objpretrain.config import get_pretrain_cfg  # noqa: E402
from objpretrain.engine import build_pretrain_optimizer, ema_update, unwrap_model  # noqa: E402
from objpretrain.modeling.contract import dataset_mapper_name  # noqa: E402


def synthetic_soco_batch(cfg, batch_size, seed=0):
    """Mapper-format SoCo inputs with random pixels and K random boxes per view, sized as the config says."""
    soco = cfg.INPUT.SOCO
    views = [("v1", soco.VIEW_SIZE), ("v2", soco.VIEW_SIZE), ("v3", soco.V3_SIZE), ("v4", soco.V4_SIZE)]
    views = [(name, size) for name, size in views if size > 0]
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for index in range(batch_size):
        pixels, boxes = [], []
        for _, size in views:
            pixels.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator))
            corner = torch.rand(soco.NUM_PROPOSALS, 2, generator=generator) * size * 0.5
            extent = (torch.rand(soco.NUM_PROPOSALS, 2, generator=generator) * 0.4 + 0.1) * size
            boxes.append(torch.cat([corner, corner + extent], dim=1))
        batch.append({"image_id": f"synthetic_{index}", "file_name": "", "views": pixels, "boxes": boxes,
                      "view_names": [name for name, _ in views]})
    return batch


def synthetic_oac_batch(cfg, batch_size, seed=0):
    """Mapper-format OAC inputs (docs/design.md) with random pixels, sized as the config says."""
    size, grid = cfg.INPUT.OAC.CROP_SIZE, cfg.INPUT.OAC.LOC_GRID
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for index in range(batch_size):
        views = {key: torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
                 for key in ("view1", "view2", "whole_image")}
        record = {"image_id": f"synthetic_{index}", "file_name": "", "view1": views["view1"],
                  "view2": views["view2"], "rotation_label": index % len(cfg.INPUT.OAC.ROTATIONS)}
        if cfg.MODEL.OAC.LAMBDA_LOC > 0:
            record["whole_image"] = views["whole_image"]
            record["loc_target"] = (torch.rand(grid * grid, generator=generator) < 0.3).float()
        batch.append(record)
    return batch


def synthetic_batch(cfg, batch_size):
    """A batch of random inputs of the form the config's model takes (its mapper's outputs)."""
    return {"SoCoMapper": synthetic_soco_batch, "OACMapper": synthetic_oac_batch}[dataset_mapper_name(cfg)](
        cfg, batch_size)


def fvcore_forward_macs(model, batch):
    """Multiply-adds of one forward pass (online and target networks) on ``batch``, by fvcore's counter."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, (batch,))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total()


def training_step_flops(model, batch, device, amp):
    """FLOPs of one training step on ``batch`` (forward and backward), by PyTorch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp):
        sum(model(batch).values()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_host_memory_mb():
    """Peak RSS of this process (getrusage) and the sum of the peak RSS (VmHWM) of its live children, the
    data-loader workers (Linux only; 0 elsewhere)."""
    to_mb = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss is KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb
    children_kb = 0
    for children_file in glob.glob("/proc/self/task/*/children"):
        with open(children_file) as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/status") as status:
                        children_kb += next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
                except (OSError, StopIteration):
                    continue  # the child ended meanwhile
    return own, children_kb / 1024


def set_foreach(optimizer, foreach):
    """Multi-tensor (foreach) or per-parameter updates: LARS's flag, torch.optim.SGD's per-group option."""
    if hasattr(optimizer, "foreach"):
        optimizer.foreach = foreach
    for group in optimizer.param_groups:
        if "foreach" in group:
            group["foreach"] = foreach


def time_steps(cfg, args, view_batching=None, foreach=True):
    """Builds the model and optimizer of ``cfg`` and times ``args.iters`` training steps after ``args.warmup``; the
    step is split into data wait, forward, backward, optimizer and EMA (CUDA synchronized at each boundary). Returns
    the result dict (bench/train_step.py's JSON line)."""
    cfg = cfg.clone()
    cfg.defrost()
    if view_batching:
        cfg.MODEL.SOCO.VIEW_BATCHING = view_batching
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_flops = forward_macs = 0
    if args.flops:
        flops_batch = synthetic_batch(cfg, cfg.SOLVER.IMS_PER_BATCH)
        step_flops = training_step_flops(model, flops_batch, args.device, args.amp)
        forward_macs = fvcore_forward_macs(model, flops_batch)
    compile_s = 0.0
    if args.compile:
        for network in ("online_network", "target_network"):
            network = getattr(unwrap_model(model), network, None)
            if network is not None and hasattr(network, "backbone"):
                network.backbone = torch.compile(network.backbone)
    optimizer = build_pretrain_optimizer(cfg, model)
    set_foreach(optimizer, foreach)
    scaler = torch.amp.GradScaler(args.device, enabled=args.amp)
    momentum_pairs = list(unwrap_model(model).momentum_pairs().values())
    if args.synthetic:
        batches = itertools.repeat(synthetic_batch(cfg, cfg.SOLVER.IMS_PER_BATCH))
    else:
        from objpretrain.data.build import build_pretrain_loader

        batches = iter(build_pretrain_loader(cfg))
    cuda = args.device.startswith("cuda")

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    phases = ("data", "forward", "backward", "optimizer", "ema")
    times = {phase: [] for phase in phases}
    for iteration in range(args.warmup + args.iters):
        marks = [now()]
        batch = next(batches)
        marks.append(now())
        with torch.autocast(args.device.split(":")[0], dtype=torch.float16, enabled=args.amp):
            loss = sum(model(batch).values())
        marks.append(now())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        marks.append(now())
        scaler.step(optimizer)
        scaler.update()
        marks.append(now())
        if momentum_pairs:
            ema_update(momentum_pairs, 0.99, foreach=foreach)
        marks.append(now())
        if args.compile and iteration == 0:
            compile_s = marks[-1] - marks[0]  # the first step compiles
        if iteration >= args.warmup:
            for phase, start, stop in zip(phases, marks, marks[1:]):
                times[phase].append(stop - start)

    mean = {phase: sum(values) / len(values) for phase, values in times.items()}
    step_s = sum(mean[phase] for phase in phases[1:])
    own_mb, children_mb = peak_host_memory_mb()
    result = {
        "config": args.config_file,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "batch": cfg.SOLVER.IMS_PER_BATCH,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "view_batching": cfg.MODEL.SOCO.VIEW_BATCHING if dataset_mapper_name(cfg) == "SoCoMapper" else None,
        "foreach": foreach,
        "data": "synthetic" if args.synthetic else f"loader, {cfg.DATALOADER.NUM_WORKERS} workers",
        "iters": args.iters,
        "images_per_s": round(cfg.SOLVER.IMS_PER_BATCH / (mean["data"] + step_s), 2),
        "data_s_per_iter": round(mean["data"], 4),
        "step_s_per_iter": round(step_s, 4),
        **{f"{phase}_s": round(mean[phase], 4) for phase in phases[1:]},
        "data_share": round(mean["data"] / (mean["data"] + step_s), 4),
        "peak_rss_mb": round(own_mb, 1),
        "peak_rss_workers_mb": round(children_mb, 1),
        "final_loss": round(loss.item(), 4),
    }
    if args.compile:
        result["compile_s"] = round(compile_s, 1)
    if cuda:
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    if args.flops:
        step_tflop = step_flops / 1e12
        result["step_tflop"] = round(step_tflop, 3)
        result["fvcore_forward_gmac"] = round(forward_macs / 1e9, 2)
        result["achieved_tflops"] = round(step_tflop / step_s, 2)
        result["mfu"] = round(step_tflop / step_s / args.peak_tflops, 4)
    return result


# --compare: (name, MODEL.SOCO.VIEW_BATCHING or None for the config's, foreach); the first is the reference.
COMPARE_VARIANTS = [
    ("per-parameter updates, per-view calls", "per_view", False),
    ("foreach updates", "per_view", True),
    ("foreach updates, per-size view calls", "per_size", True),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/demo/soco_r18_fpn_demo.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=0, help="images per step (default: SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="autocast to float16 with a GradScaler (CUDA only)")
    parser.add_argument("--synthetic", action="store_true", help="random views instead of the data loader")
    parser.add_argument("--channels-last", action="store_true", help="model weights in channels-last layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile the online and target backbones")
    parser.add_argument("--view-batching", choices=("per_view", "per_size"),
                        help="MODEL.SOCO.VIEW_BATCHING (default: the config's)")
    parser.add_argument("--no-foreach", action="store_true", help="per-parameter optimizer and EMA updates")
    parser.add_argument("--compare", action="store_true",
                        help="time the variants of COMPARE_VARIANTS in this run, each with its ratio to the first")
    parser.add_argument("--passes", type=int, default=3, help="--compare: passes over the variants, averaged")
    parser.add_argument("--flops", action="store_true",
                        help="count FLOPs (PyTorch, fvcore as a cross-check) and report model FLOPs utilization")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's peak dense TFLOP/s for MFU (H200 / H100 SXM bf16/fp16: 989)")
    parser.add_argument("--json", help="also append the result line to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()

    cfg = get_pretrain_cfg(args.config_file, args.opts)
    cfg.defrost()
    cfg.MODEL.DEVICE = args.device
    if args.batch:
        cfg.SOLVER.IMS_PER_BATCH = args.batch
    if not args.compare:
        write(time_steps(cfg, args, args.view_batching, not args.no_foreach), args.json)
        return
    variants = COMPARE_VARIANTS if dataset_mapper_name(cfg) == "SoCoMapper" else [
        (name, None, foreach) for name, batching, foreach in COMPARE_VARIANTS if batching == "per_view"]
    # Passes A B C, A B C, ...: the first variant timed in a fresh process runs slower (allocator and thread-pool
    # warm-up), which would flatter the others; each variant's images/s is the mean over the passes.
    passes = [[time_steps(cfg, args, batching, foreach) for _, batching, foreach in variants]
              for _ in range(args.passes)]
    reference = sum(p[0]["images_per_s"] for p in passes) / args.passes
    for index, (name, _, _) in enumerate(variants):
        runs = [p[index]["images_per_s"] for p in passes]
        result = dict(passes[-1][index], variant=name, images_per_s=round(sum(runs) / len(runs), 2),
                      images_per_s_passes=runs)
        result["images_per_s_ratio"] = round(result["images_per_s"] / reference, 3)
        write(result, args.json)


def write(result, json_path):
    print(json.dumps(result), flush=True)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
