#!/usr/bin/env python
"""Plain-PyTorch MoCo-v2 and BYOL on a torchvision ResNet-18: the reference that tells a learning regime from a
defect of the project's arms (docs/results.md, "Regime or defect").

Nothing of objpretrain is used for training: torchvision's ResNet-18 (7x7 stem) and transforms, a
torch DataLoader with a shuffling sampler, SGD with linear warm-up then cosine. Only the measurement is shared
with the project (``objpretrain.evaluation.view_retrieval``), so both are scored on the same held-out views with
the same BatchNorm handling.

    python bench/reference_ssl.py --method moco --images DIR --eval-images DIR --output ref.json
    python bench/reference_ssl.py --method moco ... --iters 0   # random init, measured the same way

Prints and writes: view-retrieval top-1 every ``--eval-every`` iterations and the spread of the L2-normalized
embeddings (mean cosine to the batch-mean direction; near 1 is collapse) every ``--log-every``.
"""
import argparse
import copy
import glob
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from objpretrain.evaluation.view_retrieval import make_retrieval_views, view_retrieval  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        image = Image.open(self.files[i]).convert("RGB")
        return self.transform(image), self.transform(image)


def augmentation(size, crop_min, jitter, jitter_prob, grayscale_prob):
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(crop_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_prob),
        v2.RandomGrayscale(p=grayscale_prob),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def resnet18_trunk():
    network = torchvision.models.resnet18()
    network.fc = nn.Identity()  # global average pool of layer4: 512-d
    return network


def mlp(in_dim, hidden, out, norm):
    layers = [nn.Linear(in_dim, hidden, bias=not norm)] + ([nn.BatchNorm1d(hidden)] if norm else [])
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Linear(hidden, out))


def cosine_to_mean(z):
    z = F.normalize(z.detach(), dim=1)
    return float((z @ F.normalize(z.mean(0), dim=0)).mean())


def lr_at(step, base_lr, warmup, total):
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(args):
    torch.manual_seed(args.seed)
    files = sorted(glob.glob(os.path.join(args.images, "*.png")) + glob.glob(os.path.join(args.images, "*.jpg")))
    eval_files = sorted(glob.glob(os.path.join(args.eval_images, "*.png")) +
                        glob.glob(os.path.join(args.eval_images, "*.jpg")))[: args.eval_count]
    views = make_retrieval_views(eval_files, args.size, seed=0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255

    def normalize(x):
        return (x.float() - mean) / std

    def embed(network, x):
        return network(x)

    transform = augmentation(args.size, args.crop_min, args.jitter, args.jitter_prob, args.grayscale_prob)
    loader = torch.utils.data.DataLoader(TwoViews(files, transform), batch_size=args.batch, shuffle=True,
                                         drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    online = nn.Sequential()
    online.add_module("backbone", resnet18_trunk())
    online.add_module("projector", mlp(512, args.hidden, args.dim, args.method == "byol"))
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    predictor = mlp(args.dim, args.hidden, args.dim, True) if args.method == "byol" else None
    params = list(online.parameters()) + (list(predictor.parameters()) if predictor is not None else [])
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    queue = F.normalize(torch.randn(args.queue, args.dim), dim=1)
    ptr = 0
    record = {"args": vars(args), "retrieval": [], "log": [], "chance": views.chance}

    def measure(step):
        top1 = view_retrieval(online.backbone, embed, views, normalize)
        record["retrieval"].append([step, top1])
        print(f"iter {step}: view retrieval top-1 {100 * top1:.1f} % (chance {100 * views.chance:.1f} %)", flush=True)

    measure(0)
    initial = {n: p.detach().clone() for n, p in online.backbone.named_parameters() if p.ndim > 1}
    step, start = 0, time.time()
    while step < args.iters:
        for x1, x2 in loader:
            if step >= args.iters:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args.lr, args.warmup, args.iters)
            online.train(), target.train()
            if args.method == "moco":  # MoCo-v2: one-sided InfoNCE, query view 1, key view 2
                q = F.normalize(online(x1), dim=1)
                with torch.no_grad():
                    k = F.normalize(target(x2), dim=1)
                logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / args.temperature
                loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
                spread = cosine_to_mean(q)
            else:  # BYOL: symmetrized normalized MSE between predictions and target projections
                p1, p2 = predictor(online(x1)), predictor(online(x2))
                with torch.no_grad():
                    t1, t2 = target(x1), target(x2)
                loss = sum(2 - 2 * F.cosine_similarity(p, t.detach(), dim=1).mean() for p, t in ((p1, t2), (p2, t1)))
                spread = cosine_to_mean(p1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for t_param, o_param in zip(target.parameters(), online.parameters()):
                    t_param.lerp_(o_param, 1 - args.momentum)
                if args.method == "moco":
                    index = (ptr + torch.arange(len(k))) % args.queue
                    queue[index] = k
                    ptr = (ptr + len(k)) % args.queue
            step += 1
            if step % args.log_every == 0:
                record["log"].append([step, float(loss.detach()), spread])
                print(f"iter {step}: loss {float(loss.detach()):.3f}, cosine to mean {spread:.3f}, "
                      f"{(time.time() - start) / step:.2f} s/it", flush=True)
            if step % args.eval_every == 0:
                measure(step)
    stages = {"stem": "conv1.", "res2": "layer1.", "res3": "layer2.", "res4": "layer3.", "res5": "layer4."}
    record["move_since_start"] = {}
    for stage, prefix in stages.items():
        names = [n for n in initial if n.startswith(prefix)]
        current = dict(online.backbone.named_parameters())
        diff = sum(float((current[n].detach() - initial[n]).pow(2).sum()) for n in names)
        record["move_since_start"][stage] = (diff / sum(float(initial[n].pow(2).sum()) for n in names)) ** 0.5
    print("relative weight change since start:", record["move_since_start"], flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("moco", "byol"), default="moco")
    parser.add_argument("--images", required=True, help="folder of training images")
    parser.add_argument("--eval-images", required=True, help="folder of held-out images for view retrieval")
    parser.add_argument("--eval-count", type=int, default=128)
    parser.add_argument("--output", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--momentum", type=float, default=0.99, help="EMA of the target / key encoder")
    parser.add_argument("--queue", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--crop-min", type=float, default=0.5)
    parser.add_argument("--jitter", type=float, nargs=4, default=(0.2, 0.2, 0.2, 0.05))
    parser.add_argument("--jitter-prob", type=float, default=0.8)
    parser.add_argument("--grayscale-prob", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=50)
    return train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
