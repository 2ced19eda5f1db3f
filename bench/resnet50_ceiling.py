#!/usr/bin/env python
"""The ceiling a SoCo step is measured against (docs/performance.md): a plain torchvision ResNet-50 supervised
training step (cross-entropy on 1000 classes, SGD with momentum) on the same device, in images/s and in achieved
FLOP/s (PyTorch's FlopCounterMode over one whole step, 2 FLOPs per multiply-add, as bench/train_step.py counts).
A BatchNorm convnet does not reach the tensor cores' peak on any GPU; what the same GPU does on this network is the
yardstick for SoCo's backbone-heavy step. One JSON line.

    python bench/resnet50_ceiling.py --device cuda --batch 256 --amp --channels-last  # needs: a GPU
    python bench/resnet50_ceiling.py --batch 4 --size 64 --iters 2  # on a CPU: that it runs
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision


def step_flops(model, images, labels, device, amp):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp):
        F.cross_entropy(model(images), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="autocast to float16 with a GradScaler (CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", help="also append the result line to this file")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(args.device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = torch.randn(args.batch, 3, args.size, args.size, device=args.device).to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=args.device)
    flops = step_flops(model, images, labels, args.device, args.amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    scaler = torch.amp.GradScaler(args.device, enabled=args.amp)
    cuda = args.device.startswith("cuda")
    times = []
    for iteration in range(args.warmup + args.iters):
        start = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=torch.float16, enabled=args.amp):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        if iteration >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = sum(times) / len(times)
    result = {
        "bench": "resnet50_ceiling",
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "batch": args.batch, "size": args.size, "amp": args.amp, "channels_last": args.channels_last,
        "images_per_s": round(args.batch / step_s, 2), "step_s": round(step_s, 4),
        "step_tflop": round(flops / 1e12, 4), "achieved_tflops": round(flops / 1e12 / step_s, 3),
        "final_loss": round(loss.item(), 4),
    }
    if cuda:
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
