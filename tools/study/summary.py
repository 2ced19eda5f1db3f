"""The study's statistics: per-arm mean ± std over seeds, the health columns, Welch's t-test of every claim,
and the Markdown table, summary.json and plots they are written to."""
import json
import os

import numpy as np
from scipy.stats import ttest_ind

from objpretrain.utils.atomic_io import atomic_write_bytes, atomic_write_json

from .pipeline import AP_METRICS, ARMS, TRANSFERS
from .plots import plot_health, plot_scores, plot_transfer


def _mean_std(values):
    """Mean and sample standard deviation (0 for a single value) of the finite ``values``; None when empty."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


# The probe metrics of the summary: result key -> its name in the tables.
METRICS = {"view_retrieval": "view retrieval top-1", "object_probe_top1": "object probe top-1 (64 px)",
           "object_probe_128_top1": "object probe top-1 (128 px)", "linear_probe_map": "image probe mAP"}
# The orderings checked on the probes, (better, worse): every pretrained arm against random init (does it learn at
# all?), then what the papers claim: SoCo Table 4 (with Table 1's BYOL baseline), OAC Tables 4-6.
CLAIMS = [(arm, "random_init") for arm in ARMS if arm != "random_init"] + [
    ("soco", "byol_whole_image"), ("moco_obj_obj_dilate", "moco_scene")]
# The orderings checked on detection transfer (final box AP and AP50 per number of labelled scenes): every transfer
# against random init (the supervised one is the positive control that the protocol must see), SoCo's full transfer
# against whole-image BYOL and against its backbone alone (SoCo Tables 1, 4), OAC's cropping (Tables 5-6).
TRANSFER_CLAIMS = [(name, "random_init") for name in TRANSFERS if name != "random_init"] + [
    ("soco_full", "byol_whole_image"), ("soco_full", "soco_backbone"), ("soco_backbone_fpn", "soco_backbone"),
    ("soco_backbone", "soco_backbone_pretrained_scale"),
    ("moco_obj_obj_dilate", "moco_scene")]
TRANSFER_CLAIM_METRICS = ("AP", "AP50")


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
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in results)]
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
    transfer_rows = transfer_table_rows(results)
    claims += transfer_claims(transfer_rows)
    atomic_write_json(os.path.join(out, "summary.json"), {"arms": rows, "transfer": transfer_rows, "claims": claims},
                      indent=1)
    table = _markdown(rows, claims, metrics) + _transfer_markdown(transfer_rows)
    atomic_write_bytes(os.path.join(out, "results_table.md"), (table + "\n").encode())
    plot_scores(results, rows, out, {m: METRICS[m] for m in metrics})
    plot_health(results, out, list(ARMS))
    plot_transfer(results, transfer_rows, out, list(TRANSFERS))
    return rows, table


def transfer_table_rows(results):
    """One row per transfer arm and number of labelled scenes: ``<metric>_per_seed``, ``_mean``, ``_std`` of every
    COCO metric of :data:`AP_METRICS` after fine-tuning."""
    rows = []
    scenes = sorted({int(n) for r in results for per_n in r.get("transfer", {}).values() for n in per_n})
    for n in scenes:
        for name in TRANSFERS:
            records = sorted(((r["seed"], r["transfer"][name][str(n)]) for r in results
                              if str(n) in r.get("transfer", {}).get(name, {})), key=lambda x: x[0])
            if not records:
                continue
            row = {"transfer": name, "scenes": n, "seeds": [seed for seed, _ in records]}
            for metric in AP_METRICS:
                values = [record[metric] for _, record in records]
                row[f"{metric}_per_seed"] = values
                row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(values)
            rows.append(row)
    return rows


def transfer_claims(transfer_rows):
    """Every ordering of :data:`TRANSFER_CLAIMS` whose two arms ran, per number of scenes and metric."""
    by_key = {(r["transfer"], r["scenes"]): r for r in transfer_rows}
    claims = []
    for n in sorted({r["scenes"] for r in transfer_rows}):
        for better, worse in TRANSFER_CLAIMS:
            if (better, n) in by_key and (worse, n) in by_key:
                for metric in TRANSFER_CLAIM_METRICS:
                    values = [[v for v in by_key[(a, n)][f"{metric}_per_seed"] if v is not None]
                              for a in (better, worse)]
                    difference, p_value = compare(*values)
                    claims.append({"claim": f"{better} > {worse}", "metric": f"box {metric}, {n} labelled scenes",
                                   "difference": difference, "p_value": p_value,
                                   "verdict": verdict(difference, p_value)})
    return claims


def _transfer_markdown(transfer_rows):
    if not transfer_rows:
        return ""
    lines = []
    for n in sorted({r["scenes"] for r in transfer_rows}):
        lines += ["", f"Detection transfer, {n} labelled scenes (final COCO box metrics):", "",
                  "| transfer | seeds | AP, mean ± std | per seed | AP50 | AP75 | APs | APm |", "|" + " --- |" * 8]
        for r in (r for r in transfer_rows if r["scenes"] == n):
            per_seed = ", ".join("-" if v is None else f"{v:.1f}" for v in r["AP_per_seed"])
            # APs / APm are NaN where the held-out scenes have no object of that size: n/a
            cells = ["n/a" if r[f"{m}_mean"] is None else f"{r[f'{m}_mean']:.1f} ± {r[f'{m}_std']:.1f}"
                     for m in AP_METRICS]
            lines.append(f"| {r['transfer']} | {len(r['seeds'])} | {cells[0]} | {per_seed} | " + " | ".join(cells[1:])
                         + " |")
    return "\n".join(lines)


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
    "feature_rank": lambda h: h.get("feature_rank"),
    "feature_rank_initial": lambda h: h.get("feature_rank_initial"),
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
            cells += cell(r, metric, 1)
        lines.append("| " + " | ".join(cells) + " |")
    health_rows = [r for r in rows if "health_cosine_to_mean_mean" in r]
    if health_rows:
        lines += ["", "| arm | final cosine to mean | final spread | loss / collapse value | res5 moved | stem moved "
                  "| view retrieval (monitor) | same, initial weights | feature effective rank | same, initial "
                  "weights |", "|" + " --- |" * 10]
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
            lines.append(f"| {c['claim']} | {METRICS.get(c['metric'], c['metric'])} | {c['difference']:+.2f} | "
                         f"{p_value} | {c['verdict']} |")
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
