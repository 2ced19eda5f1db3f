#!/usr/bin/env python
"""How the cost grows with batch size and with the number of images, at three points each, plotted.

- Training step against batch size: ``bench/train_step.py`` (synthetic views, so the model alone) at each
  ``--batches`` value, for each ``--configs`` (the SoCo and OAC demo configs by default).
- Proposal generation against the number of images: ``tools/generate_proposals.py`` (default method, one
  worker) on the first N images for each ``--image-counts`` value: bench/mappers.py's synthetic 1024 x 768 JPEG
  photographs (all alike, so the cost per image is constant), or the images of a folder (``--images``).

Every run is a subprocess with ``OMP_NUM_THREADS=1`` (one core). Writes ``scaling.json`` and the plots
``step_vs_batch.png`` and ``proposals_vs_images.png`` to ``--output-dir``, each with the least-squares line
(fixed cost + cost per image) of its three points.

    python bench/scaling.py --output-dir docs/images
"""
import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIGS = ["configs/demo/soco_r18_fpn_demo.yaml", "configs/demo/oac_moco_r18_demo.yaml"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def one_core_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=REPO)


def step_time(config, batch, iters):
    command = [sys.executable, "bench/train_step.py", "--config-file", config, "--synthetic", "--batch", str(batch),
               "--iters", str(iters), "--warmup", "1"]
    done = subprocess.run(command, cwd=REPO, env=one_core_env(), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def proposal_time(images, count, out_dir):
    list_file = os.path.join(out_dir, f"images_{count}.txt")
    with open(list_file, "w") as f:
        f.write("\n".join(images[:count]) + "\n")
    output = os.path.join(out_dir, f"proposals_{count}.pkl")
    command = [sys.executable, "tools/generate_proposals.py", "--images", list_file, "--output", output,
               "--workers", "1", "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=one_core_env(), capture_output=True, text=True, check=True)
    return time.perf_counter() - start


def linear_fit(xs, ys):
    """(intercept, slope) of the least-squares line: fixed cost and cost per image (or per batch element)."""
    import numpy as np

    slope, intercept = np.polyfit(xs, ys, 1)
    return round(float(intercept), 4), round(float(slope), 4)


def plot(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for config, points in results["step_vs_batch"].items():
        batches = [p["batch"] for p in points]
        intercept, slope = results["fits"][config]
        axis.plot(batches, [p["step_s_per_iter"] for p in points], "o-",
                  label=f"{os.path.basename(config)}: {intercept:.2f} s + {slope:.3f} s/image")
    axis.set(xlabel="images per step (batch)", ylabel="step time (s), 1 core", xticks=batches,
             title="Training step vs batch size (CPU)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "step_vs_batch.png"), dpi=100)

    figure, axis = plt.subplots(figsize=(5, 3.5))
    points = results["proposals_vs_images"]
    counts = [p["images"] for p in points]
    intercept, slope = results["fits"]["proposals"]
    axis.plot(counts, [p["wall_s"] for p in points], "o-", label=f"{intercept:.1f} s + {slope:.3f} s/image")
    axis.legend(fontsize=8)
    axis.set(xlabel="images", ylabel="wall time (s), 1 worker", xticks=counts,
             title="Proposal generation vs number of images")
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "proposals_vs_images.png"), dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEMO_CONFIGS)
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--images", default="synthetic", help="a folder of images, or 'synthetic'")
    # Large enough that the per-image cost shows over the ~4 s start-up (imports) of the tool.
    parser.add_argument("--image-counts", nargs="+", type=int, default=[25, 50, 100])
    parser.add_argument("--output-dir", default="docs/images")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix="bench_scaling_")
    if args.images == "synthetic":
        make_photos = runpy.run_path(os.path.join(REPO, "bench", "mappers.py"))["make_photos"]
        images = [record["file_name"] for record in make_photos(work_dir, max(args.image_counts), 1024, 768)]
    else:
        folder = os.path.abspath(args.images)
        images = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                        if name.lower().endswith(IMAGE_SUFFIXES))
    if len(images) < max(args.image_counts):
        raise SystemExit(f"{args.images} has {len(images)} images, fewer than {max(args.image_counts)}")

    results = {"step_vs_batch": {}, "proposals_vs_images": []}
    for config in args.configs:
        results["step_vs_batch"][config] = []
        for batch in args.batches:
            result = step_time(config, batch, args.iters)
            results["step_vs_batch"][config].append(result)
            print(json.dumps(result), flush=True)
    for count in args.image_counts:
        seconds = proposal_time(images, count, work_dir)
        results["proposals_vs_images"].append({"images": count, "wall_s": round(seconds, 2),
                                               "s_per_image": round(seconds / count, 3)})
        print(json.dumps(results["proposals_vs_images"][-1]), flush=True)
    shutil.rmtree(work_dir)
    results["fits"] = {
        config: linear_fit([p["batch"] for p in points], [p["step_s_per_iter"] for p in points])
        for config, points in results["step_vs_batch"].items()
    }
    points = results["proposals_vs_images"]
    results["fits"]["proposals"] = linear_fit([p["images"] for p in points], [p["wall_s"] for p in points])
    print(json.dumps(results["fits"]))
    with open(os.path.join(args.output_dir, "scaling.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
