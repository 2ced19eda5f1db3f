"""Crash-safe file writes: a reader, or a run resumed after a kill, sees the old file or the new one, never a mix.

Every file a long job leaves behind for a later step (checkpoints, proposal files, converted weights, dataset
json, feature caches) is written through here.
"""
import json
import os
import tempfile

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json"]


def atomic_write(path, write, mode="wb"):
    """Runs ``write(file)`` on a temporary file next to ``path``, fsyncs it, renames it over ``path`` and fsyncs
    the folder (so the rename itself survives a power cut). The temporary file is removed on any error."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path, data):
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path, data, **dump_kwargs):
    atomic_write(path, lambda f: json.dump(data, f, **dump_kwargs), mode="w")
