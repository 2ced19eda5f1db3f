"""The proposal job: every image of a shard through decode -> backend -> filters, into a proposal file.

- Worker processes (``multiprocessing``) each build the backend once; results come back in input order
  (``imap``), so the output is identical whatever the worker count.
- Each finished image is appended to a journal (``journal.py``); a restart with ``resume=True`` skips the
  images already there. The final file is written atomically and the journal then removed.
- A bad image (unreadable, truncated, tiny, a backend failure, missing from an imported file) is logged
  with its file name and recorded with zero proposals; the summary counts every kind, and every conversion
  the decoder applied (grayscale, CMYK, 16-bit, EXIF rotation, ...), and what each filter removed.
"""
import logging
import multiprocessing as mp
import os

import numpy as np

from ..image_io import BadImageError, read_image_rgb
from .files import load_proposal_file, rank_logits, save_proposal_file
from .filters import filter_proposals
from .inputs import inputs_digest, shard_slice
from .journal import ProposalJournal
from .presets import ProposalRecipe
from .summary import format_summary, summarize

logger = logging.getLogger(__name__)

__all__ = ["process_image", "run_proposal_job", "default_num_workers"]

FORMAT_VERSION = 1


def default_num_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_image(backend, recipe, index, image_id, path, keep_raw=False):
    """One image's journal record: status, decoder notes, filter counts, kept boxes and logits.

    With ``keep_raw`` the record also holds ``raw_boxes``, the backend's boxes before filtering.
    """
    record = {"index": index, "id": image_id, "file": path, "status": "ok", "reason": None, "notes": []}
    record.update(size=None, raw=0, removed={}, boxes=[], logits=[])
    try:
        image, orig_size = read_image_rgb(path, max_size=backend.max_input_size, notes=record["notes"])
    except BadImageError as e:
        record.update(status="unreadable", reason=e.reason)
        return record
    record["size"] = list(orig_size)
    if min(orig_size) < recipe.min_image_side:
        record.update(status="tiny", reason=f"{orig_size[1]}x{orig_size[0]} px, under {recipe.min_image_side} px")
        return record
    try:
        boxes, scores = backend.propose(image, orig_size, image_id)
    except KeyError as e:
        record.update(status="not_in_file", reason=str(e.args[0]))
        return record
    except Exception as e:  # a backend failure on one image must not stop the job
        record.update(status="backend_error", reason=f"{type(e).__name__}: {e}")
        return record
    height, width = orig_size
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    boxes = np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32))
    ranks_only = scores is None
    if ranks_only:
        scores = rank_logits(len(boxes))
    kept, kept_scores, removed = filter_proposals(boxes, scores, orig_size, recipe.filters)
    if ranks_only:
        kept_scores = rank_logits(len(kept))
    record.update(
        raw=len(boxes), removed=dict(sorted(removed.items())), boxes=kept.tolist(), logits=kept_scores.tolist()
    )
    if keep_raw:
        record["raw_boxes"] = boxes.tolist()
    return record


_worker_state = {}


def _init_worker(recipe_dict):
    import cv2

    # One OpenCV thread per process: the job's parallelism is its worker processes.
    cv2.setNumThreads(1)
    recipe = ProposalRecipe.from_dict(recipe_dict)
    _worker_state.update(recipe=recipe, backend=recipe.build_backend())


def _process_in_worker(task):
    return process_image(_worker_state["backend"], _worker_state["recipe"], *task)


def _map_in_order(tasks, recipe, workers):
    if workers <= 1 or len(tasks) <= 1:
        import cv2

        threads = cv2.getNumThreads()
        try:
            _init_worker(recipe.to_dict())
            for task in tasks:
                yield _process_in_worker(task)
        finally:
            cv2.setNumThreads(threads)
            _worker_state.clear()
        return
    # Not plain fork: a parent that already ran OpenCV or OpenMP code holds thread-pool state that a forked
    # child deadlocks on (seen as workers hanging in cv2.setNumThreads). The fork server is a fresh process
    # that imports this module once and then forks each worker cheaply.
    if "forkserver" in mp.get_all_start_methods():
        context = mp.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = mp.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(recipe.to_dict(),)) as pool:
        yield from pool.imap(_process_in_worker, tasks, chunksize=1)


def run_proposal_job(items, output, recipe, workers=None, shard=(0, 1), resume=False, progress=True, sync_every=16):
    """Computes proposals for shard ``shard`` of ``items`` and writes them to ``output``.

    Args:
        items: the whole job's ``[(image_id, file_name), ...]`` (all shards), in input order.
        output: the Detectron2 proposal pickle to write; its journal is ``output + ".journal"``.
        recipe: ProposalRecipe.
        workers: worker processes (default: all usable cores).
        shard: (i, n): this run does the i-th of n contiguous blocks of ``items``.
        resume: continue from the journal of an interrupted run (an existing journal without it is an error).
        progress: show a tqdm bar (images/s, ETA).
        sync_every: journal records per flush + fsync.

    Returns:
        The metadata stored in the file (recipe, summary, bad images, shard).
    """
    workers = default_num_workers() if workers is None else workers
    block = shard_slice(len(items), shard)
    shard_items = items[block]
    fingerprint = {
        "recipe": recipe.to_dict(),
        "num_inputs": len(items),
        "inputs_digest": inputs_digest(items),
        "shard": list(shard),
    }
    journal_path = output + ".journal"
    if resume and os.path.exists(output) and not os.path.exists(journal_path):
        meta = load_proposal_file(output).get("metadata") or {}
        if all(meta.get(k) == v for k, v in fingerprint.items()):
            logger.info("%s is already complete", output)
            return meta

    journal = ProposalJournal(journal_path, fingerprint, resume=resume, sync_every=sync_every)
    tasks = [
        (block.start + k, image_id, path)
        for k, (image_id, path) in enumerate(shard_items)
        if block.start + k not in journal.records
    ]
    try:
        _run_tasks(tasks, recipe, min(workers, max(len(tasks), 1)), journal, len(shard_items), progress)
    finally:
        journal.close()

    records = [journal.records[block.start + k] for k in range(len(shard_items))]
    for record, (image_id, _) in zip(records, shard_items):
        if record["id"] != image_id:
            raise RuntimeError(f"{journal_path}: record {record['index']} is {record['id']!r}, expected {image_id!r}")
    metadata = dict(fingerprint)
    metadata.update(
        format_version=FORMAT_VERSION,
        summary=summarize(records),
        bad_images={r["id"]: f"{r['status']}: {r['reason']}" for r in records if r["status"] != "ok"},
    )
    save_proposal_file(
        output,
        [r["id"] for r in records],
        [np.asarray(r["boxes"], dtype=np.float32).reshape(-1, 4) for r in records],
        [np.asarray(r["logits"], dtype=np.float32).reshape(-1) for r in records],
        metadata,
    )
    journal.remove()
    logger.info("Wrote %s\n%s", output, format_summary(metadata["summary"]))
    return metadata


def _run_tasks(tasks, recipe, workers, journal, total, progress):
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, initial=total - len(tasks), unit="img", disable=not progress, dynamic_ncols=True)
    with bar, logging_redirect_tqdm():
        for record in _map_in_order(tasks, recipe, workers):
            if record["status"] != "ok":
                logger.warning("%s (%s): %s, recorded with no proposals: %s",
                               record["file"], record["id"], record["status"], record["reason"])
            journal.append(record)
            bar.update(1)


