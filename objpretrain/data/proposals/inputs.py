"""What a proposal job runs on: ``(image_id, file_name)`` pairs from a folder, a list file or a dataset.

Ids follow docs/design.md so ``load_proposals_into_dataset`` finds every image: for a folder (and a list
file) the path relative to the root without extension; for a registered dataset its dicts' str(image_id).
"""
import hashlib
import os

from detectron2.data import DatasetCatalog

from ..datasets.image_folder import image_id_for, list_images, raise_for_shared_ids

__all__ = ["resolve_inputs", "parse_shard", "shard_slice", "inputs_digest"]


def resolve_inputs(spec, root=None):
    """Returns the job's ``[(image_id, file_name), ...]`` in a stable order.

    Args:
        spec: a folder (searched recursively), a text file with one image path per line (blank lines and
            lines starting with '#' skipped; relative paths are relative to the list file), or the name of
            a dataset registered in Detectron2's DatasetCatalog.
        root: for a list file, the folder ids are relative to (default: the list file's folder).
    """
    if os.path.isdir(spec):
        items = [(image_id_for(p, spec), p) for p in list_images(spec)]
    elif os.path.isfile(spec):
        items = _read_list_file(spec, root)
    elif spec in DatasetCatalog.list():
        items = []
        for d in DatasetCatalog.get(spec):
            if "image_id" not in d or "file_name" not in d:
                raise ValueError(f"dataset {spec!r}: a dict lacks 'image_id' or 'file_name': {sorted(d)}")
            items.append((str(d["image_id"]), d["file_name"]))
    else:
        raise FileNotFoundError(f"--images {spec!r} is neither a folder, a list file, nor a registered dataset")
    raise_for_shared_ids(items, f"--images {spec}")
    return items


def _read_list_file(list_path, root):
    base = os.path.dirname(os.path.abspath(list_path))
    root = os.path.abspath(root) if root else base
    items = []
    with open(list_path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = line if os.path.isabs(line) else os.path.join(base, line)
            items.append((image_id_for(path, root), path))
    return items


def parse_shard(text):
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_slice(num_items, shard):
    """The contiguous block of input positions shard (i, n) owns; shards in order cover the input in order."""
    index, count = shard
    return slice(num_items * index // count, num_items * (index + 1) // count)


def inputs_digest(items):
    """Identifies an input list by its ids (not paths: shards may run where the images are mounted elsewhere),
    so a journal or shard is never combined with another list's."""
    digest = hashlib.sha256()
    for image_id, _ in items:
        digest.update(f"{image_id}\n".encode("utf-8"))
    return digest.hexdigest()
