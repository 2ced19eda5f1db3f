"""Counts of a proposal job (images, failures by status, conversions, filtered boxes): built per shard, added up
over shards, printed as a table. The file format (files.py) and the runner (job.py) both use it; it uses neither."""
from collections import Counter

__all__ = ["BAD_STATUSES", "format_summary", "merge_summaries", "summarize"]

# Record statuses of images that got no proposals for a reason other than the filters.
BAD_STATUSES = ("unreadable", "tiny", "backend_error", "not_in_file")


def summarize(records):
    """Counts over a shard's records; ``merge_summaries`` adds shards' summaries up."""
    statuses = Counter(r["status"] for r in records)
    notes, removed = Counter(), Counter()
    for r in records:
        notes.update(r["notes"])
        removed.update(r["removed"])
    return {
        "images": len(records),
        "ok": statuses["ok"],
        **{status: statuses[status] for status in BAD_STATUSES},
        "zero_proposals": sum(1 for r in records if not r["boxes"]),
        "converted": dict(sorted(notes.items())),
        "raw_proposals": sum(r["raw"] for r in records),
        "removed": dict(sorted(removed.items())),
        "kept_proposals": sum(len(r["boxes"]) for r in records),
    }


def merge_summaries(summaries):
    merged = {}
    for summary in summaries:
        for key, value in summary.items():
            if isinstance(value, dict):
                merged[key] = dict(sorted((Counter(merged.get(key, {})) + Counter(value)).items()))
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def format_summary(summary):
    from tabulate import tabulate

    rows = [(k, v) for k, v in summary.items() if not isinstance(v, dict)]
    rows += [(f"converted: {k}", v) for k, v in summary["converted"].items()]
    rows += [(f"removed by filter: {k}", v) for k, v in summary["removed"].items()]
    return tabulate(rows, headers=["proposal job", "count"], tablefmt="pipe")
