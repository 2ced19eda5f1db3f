"""Reading pickles and torch checkpoints that may come from someone else, without running code from them.

Python's unpickler calls whatever a file names: a proposal file or a checkpoint downloaded from a release page
can call ``os.system`` while it loads. Every ``.pkl`` and ``.pth`` the project reads goes through here:

- :func:`load_pickle` (proposal pickles, Detectron2 and Caffe2 ``.pkl`` checkpoints): a ``pickle.Unpickler``
  whose ``find_class`` returns only the objects of :data:`ALLOWED_GLOBALS` (the Python docs' "Restricting
  Globals"), the numpy, builtin and Detectron2 objects those formats hold. It returns them from its own table,
  so a refused name is never even imported.
- :func:`load_torch_file` (``.pth`` / ``.pth.tar`` / ``.pt``): ``torch.load(weights_only=True)``, torch's own
  restricted unpickler (tensors, containers, numbers), which every checkpoint this project writes satisfies.

A file that asks for anything else raises :class:`UnsafePickleError`, one line naming the file and the class.
Only ``unsafe_full_unpickle=True`` (the ``--unsafe-full-unpickle`` options of tools/convert_ckpt.py and
tools/linear_eval.py) reads such a file with the full unpickler, for released checkpoints that hold Python
objects (MoCo's argparse Namespace, optimizer states) from a source the user trusts.
"""
import _compat_pickle
import collections
import logging
import pickle
import re

import numpy as np
import torch
from detectron2.structures import BoxMode

try:  # NumPy 2 moved numpy.core to numpy._core; files written under NumPy 1 still name numpy.core.
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # NumPy 1
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

__all__ = ["ALLOWED_GLOBALS", "UnsafePickleError", "load_pickle", "load_torch_file"]

logger = logging.getLogger(__name__)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that asks for an object outside the allow-list; the message names the file and the object."""


def _box_mode(value):
    """``BoxMode(value)``. The pickle gets this function instead of the class: BUILD's ``setattr`` on an allowed
    class would let a file rebind ``BoxMode``'s attributes for the whole process."""
    return BoxMode(value)


def _latin1_bytes(text, encoding):
    """Pickles of protocol < 3 write ``bytes`` (numpy's array data among them) as ``_codecs.encode(text,
    "latin1")``; that call is all they need from ``_codecs``, whose other codecs are refused."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r}: only latin1 is allowed")
    return text.encode("latin1")


# (module, name) as the pickle names them -> the object returned. Built from the globals that real files ask
# for (pickletools over each format, protocols 0 to 5):
_NUMPY_GLOBALS = {
    # arrays: protocol 5 (our writers) rebuilds them with _frombuffer, protocols 0-4 (and non-contiguous or
    # object arrays) with _reconstruct(ndarray, shape, dtype) + setstate; dtype for every array and scalar;
    # scalar() for numpy scalars (np.float32(1.0) in metadata, Caffe2 blobs).
    "multiarray._reconstruct": _np_multiarray._reconstruct,
    "multiarray.scalar": _np_multiarray.scalar,
    "numeric._frombuffer": _np_numeric._frombuffer,
}
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{package}.{module}", name): obj
       for package in ("core", "_core")  # written under NumPy 1 / NumPy 2
       for dotted, obj in _NUMPY_GLOBALS.items()
       for module, name in [dotted.split(".")]},
    # builtin containers and scalars that have no opcode of their own (set and frozenset before protocol 4,
    # complex always, bytes and bytearray before protocol 3 / 5); dict, list, tuple, str, int, float have opcodes.
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1_bytes,
    # Detectron2's checkpoints and converted state dicts may keep their OrderedDict.
    ("collections", "OrderedDict"): collections.OrderedDict,
    # the "bbox_mode" of Detectron2 proposal files
    ("detectron2.structures.boxes", "BoxMode"): _box_mode,
}


def _python3_name(module, name):
    """Python 2 pickles (Detectron1 / Caffe2 files) and protocol < 3 pickles name builtins as ``__builtin__``;
    map them as the standard unpickler does (its ``fix_imports``) before looking them up."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source, allow_hint):
        super().__init__(file, encoding="latin1")  # Python 2 files (old Detectron/Caffe2 .pkl) hold latin1 str
        self._source = source
        self._allow_hint = allow_hint

    def find_class(self, module, name):
        obj = ALLOWED_GLOBALS.get(_python3_name(module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self._source}: refused to unpickle {module}.{name}: only numpy arrays, builtin containers and "
                f"Detectron2's BoxMode are allowed in this file, and loading other objects can run code from "
                f"it{self._allow_hint}"
            )
        return obj


def load_pickle(path, *, unsafe_full_unpickle=False, allow_hint=""):
    """The object pickled in the file at ``path``, through the restricted unpickler (module docstring).

    ``allow_hint`` ends the refusal message (e.g. "; if you trust its source, pass --unsafe-full-unpickle").
    With ``unsafe_full_unpickle`` the file is read with Python's full unpickler, and a warning says so.
    """
    with open(path, "rb") as f:
        if unsafe_full_unpickle:
            logger.warning("%s: read with the full unpickler (--unsafe-full-unpickle), which runs any code the "
                           "file holds", path)
            return pickle.load(f, encoding="latin1")
        return _RestrictedUnpickler(f, path, allow_hint).load()


def load_torch_file(path, *, unsafe_full_unpickle=False, allow_hint=""):
    """``torch.load(path)`` on the CPU with ``weights_only=True`` (set explicitly, so that the
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD environment variable cannot turn it off); a file it refuses for the objects it
    holds raises :class:`UnsafePickleError` naming them. ``unsafe_full_unpickle`` as in :func:`load_pickle`."""
    if unsafe_full_unpickle:
        logger.warning("%s: read with torch.load(weights_only=False) (--unsafe-full-unpickle), which runs any code "
                       "the file holds", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_torch_globals(path, error)
        if not refused:
            raise  # a damaged file (torch words it as a weights-only failure too), not a refused one
    raise UnsafePickleError(
        f"{path}: refused to unpickle {', '.join(refused)}: torch.load(weights_only=True) reads tensors, containers "
        f"and numbers only, and loading other objects can run code from the file{allow_hint}"
    )


def _refused_torch_globals(path, error):
    """The globals that made ``torch.load(weights_only=True)`` fail: torch lists them for its zip files; for legacy
    files only its error message names the first. Empty for a damaged file (its bytes name no real global)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, ValueError):  # not a complete zip file
        return re.findall(r"Unsupported global: GLOBAL (\w[\w.]*)", str(error))[:1]
