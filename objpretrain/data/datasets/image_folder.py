"""Unlabelled image folders (a flat folder, an ImageNet-style class tree, COCO images) as Detectron2 datasets."""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(root):
    """All image files under ``root`` (recursively), sorted so the order is the same on every machine.

    Links to folders outside ``root`` are followed. A link to a folder inside it is not (that folder is listed under
    its own path), nor one to a folder already listed: either would list images again under other ids, and a link
    back up the tree would never finish. Each skipped link is counted in a warning.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist")
    inside = os.path.join(os.path.realpath(root), "")
    paths, listed, skipped = [], set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        stat = os.stat(dirpath)
        if (stat.st_dev, stat.st_ino) in listed:
            skipped.append(dirpath)
            dirnames.clear()
            continue
        listed.add((stat.st_dev, stat.st_ino))
        links_inside = {d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
                        and os.path.join(os.path.realpath(os.path.join(dirpath, d)), "").startswith(inside)}
        skipped.extend(os.path.join(dirpath, d) for d in sorted(links_inside))
        dirnames[:] = sorted(set(dirnames) - links_inside)
        paths.extend(os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
    if skipped:
        logger.warning("Image folder %r: skipped %d links to folders listed under another path (e.g. %s)", root,
                       len(skipped), skipped[0])
    return sorted(paths)


def image_id_for(path, root):
    """The dataset-wide id of an image: its path relative to ``root``, without extension, '/'-separated.

    Stable across machines and runs, and unique inside an ImageNet-style tree where basenames can repeat.
    Proposal files key their entries by this id.
    """
    rel = os.path.relpath(path, root)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def raise_for_shared_ids(items, source):
    """Raises a ValueError naming ``source`` and two files when two ``(image_id, file_name)`` items share an id:
    proposals keyed by that id could not be told apart (folder ids drop the extension: ``a.jpg`` and ``a.png``)."""
    seen = {}
    for image_id, path in items:
        if image_id in seen:
            raise ValueError(f"{source}: image id {image_id!r} is used by both {seen[image_id]} and {path}")
        seen[image_id] = path


def load_image_folder(root):
    paths = list_images(root)
    if not paths:
        raise FileNotFoundError(f"Image folder {root!r} has no images (extensions {IMAGE_EXTENSIONS})")
    dicts = [{"file_name": p, "image_id": image_id_for(p, root)} for p in paths]
    raise_for_shared_ids([(d["image_id"], d["file_name"]) for d in dicts], f"Image folder {root!r}")
    return dicts


def register_image_folder(name, root):
    """Registers every image under ``root`` as an unlabelled dataset named ``name`` (lazily listed).

    Registering the same name and folder again is a no-op; the same name for another folder is an error.
    """
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name).get("image_root")
        if registered == root:
            return name
        raise ValueError(f"dataset {name!r} is already registered with image folder {registered}, not {root}")
    DatasetCatalog.register(name, lambda: load_image_folder(root))
    MetadataCatalog.get(name).set(image_root=root, evaluator_type="none")
    return name


def register_image_folder_spec(spec):
    """Registers the folder of a "name:root" entry of DATASETS.IMAGE_FOLDER_REGISTER; returns the name."""
    name, sep, root = spec.partition(":")
    if not sep or not name.strip() or not root.strip():
        raise ValueError(f"DATASETS.IMAGE_FOLDER_REGISTER entry {spec!r}: expected 'name:root'")
    if not os.path.isdir(root.strip()):
        raise FileNotFoundError(f"DATASETS.IMAGE_FOLDER_REGISTER entry {spec!r}: {root.strip()} is not a folder")
    return register_image_folder(name.strip(), root.strip())
