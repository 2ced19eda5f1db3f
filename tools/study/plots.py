"""Plots of the study: pretraining losses, probe scores per arm, and the health monitors' curves."""
import os

import numpy as np


def plot_scores(results, rows, out, metric_names):
    """loss_curves.png (every pretraining loss) and ap_per_arm.png (each metric of ``metric_names``: key -> title,
    mean ± std per arm, every seed a dot, chance dashed)."""
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

    fig, axes = plt.subplots(1, len(metric_names), figsize=(4 * len(metric_names), 4), squeeze=False)
    names = [r["arm"] for r in rows]
    for ax, (metric, name) in zip(axes[0], metric_names.items()):
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
    ("effective rank of the image features (RankMe)", ("health/feature_rank",), "effective rank"),
]


def plot_health(results, out, arms):
    """health_curves.png: the monitors of every pretrained arm and seed over the iterations (colours in ``arms``
    order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in results if r.get("health_curves")]
    if not curves:
        return
    colours = {arm: f"C{i}" for i, arm in enumerate(arms)}
    fig, axes = plt.subplots(1, len(HEALTH_PANELS), figsize=(4.5 * len(HEALTH_PANELS), 4))
    for ax, (title, keys, label) in zip(axes, HEALTH_PANELS):
        for r in curves:
            key = next((k for k in keys if k in r["health_curves"]), None)
            if key is None:
                continue
            iters, values = r["health_curves"][key]
            ax.plot(iters, values, color=colours[r["arm"]], alpha=0.8,
                    label=r["arm"] if r["seed"] == min(c["seed"] for c in curves) else None)
            if key + "_initial" in r["health_curves"]:  # the initial weights' value, dotted
                ax.axhline(r["health_curves"][key + "_initial"][1][0], color=colours[r["arm"]],
                           linestyle=":", alpha=0.6)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6)
    axes[-1].text(0.02, 0.02, "dotted: initial weights", transform=axes[-1].transAxes, fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "health_curves.png"), dpi=120)
    plt.close(fig)


def plot_transfer(results, transfer_rows, out, names):
    """transfer_curves.png (box AP over the fine-tuning iterations, mean ± std over seeds, a panel per number of
    labelled scenes: how fast each init converges) and transfer_ap.png (final box AP per transfer arm, every seed a
    dot). ``names``: the transfer arms in plotting order."""
    if not transfer_rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = sorted({r["scenes"] for r in transfer_rows})
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, len(scenes), figsize=(6 * len(scenes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], scenes):
        for name in names:
            curves = [r["transfer"][name][str(n)]["curve"]["AP"] for r in results
                      if str(n) in r.get("transfer", {}).get(name, {})]
            if not curves:
                continue
            length = min(len(c[0]) for c in curves)
            # Iterations done: a periodic evaluation is logged at its last iteration's index (99 for 100 done), the
            # final one after the loop (at MAX_ITER)
            logged = np.asarray(curves[0][0][:length])
            iters = np.minimum(logged + 1, logged[-1])
            values = np.asarray([c[1][:length] for c in curves], dtype=float)
            mean, std = values.mean(axis=0), values.std(axis=0)
            ax.plot(iters, mean, marker="o", markersize=3, color=colours[name], label=f"{name} ({len(curves)})")
            ax.fill_between(iters, mean - std, mean + std, color=colours[name], alpha=0.12)
        ax.set_title(f"{n} labelled scenes: box AP during fine-tuning (mean ± std over seeds)", fontsize=9)
        ax.set_xlabel("fine-tuning iteration")
        ax.set_ylabel("COCO box AP")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "transfer_curves.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(scenes), figsize=(6 * len(scenes), 4), squeeze=False)
    for ax, n in zip(axes[0], scenes):
        rows = [r for r in transfer_rows if r["scenes"] == n]
        # None: no finite AP (a detector with no detection after a smoke run's few iterations)
        ax.bar([r["transfer"] for r in rows], [np.nan if r["AP_mean"] is None else r["AP_mean"] for r in rows],
               yerr=[0.0 if r["AP_std"] is None else r["AP_std"] for r in rows], capsize=4,
               color=[colours[r["transfer"]] for r in rows])
        for i, r in enumerate(rows):
            seeds = [v for v in r["AP_per_seed"] if v is not None and np.isfinite(v)]
            ax.plot([i] * len(seeds), seeds, "k.", markersize=4)
        ax.set_title(f"{n} labelled scenes: final box AP (mean ± std, seeds as dots)", fontsize=9)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "transfer_ap.png"), dpi=120)
    plt.close(fig)
