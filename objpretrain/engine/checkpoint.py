"""Crash-safe checkpoints for pretraining (``PretrainTrainer``) and fine-tuning (``tools/train_net.py``).

- Every checkpoint and the ``last_checkpoint`` tag are written to a temporary file in the same folder,
  fsynced and renamed over the target (then the folder is fsynced), so a kill at any moment leaves either the
  previous file or the complete new one, never a truncated file under the real name.
- ``resume_or_load(..., resume=True)`` loads the checkpoint that ``last_checkpoint`` names (or the newest
  ``model_*.pth`` when a kill came between a save and its tag); if that file is missing or unreadable (a disk
  that lost data, a copy that was cut short), it warns naming the bad file and falls back to the newest
  readable ``model_*.pth`` in the folder.
- Read errors name the file (:class:`CheckpointReadError`), as does a checkpoint whose ``model`` holds a
  non-tensor or a NaN/Inf value (a resume then falls back as above; ``MODEL.WEIGHTS`` stops before training).
- No code runs from a checkpoint (``MODEL.WEIGHTS``, ``--resume``): ``.pkl`` files go through the restricted
  unpickler and ``.pth`` files through ``torch.load(weights_only=True)`` (objpretrain/utils/safe_pickle.py).
  A file that holds other Python objects raises :class:`~objpretrain.utils.safe_pickle.UnsafePickleError`,
  which a resume does not fall back past: that file was not damaged, someone made it.
"""
import logging
import os
import re

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_io import atomic_write
from ..utils.safe_pickle import UnsafePickleError, load_pickle, load_torch_file

__all__ = ["AtomicDetectionCheckpointer", "CheckpointReadError"]

logger = logging.getLogger(__name__)

_CHECKPOINT_NAME = re.compile(r"^model_(\d+|final)\.pth$")


# Ends the refusal of a file with Python objects: the trainers have no switch for the full unpickler, the
# converter has (and writes a .pkl that loads here).
_WEIGHTS_HINT = ("; if you trust its source, convert it with `python tools/convert_ckpt.py FILE OUT.pkl --to ... "
                 "--unsafe-full-unpickle` and load OUT.pkl")


class CheckpointReadError(RuntimeError):
    """A checkpoint file that does not exist or cannot be deserialized; the message names it."""


def _check_model_values(checkpoint, filename):
    """Raises CheckpointReadError unless ``checkpoint["model"]`` maps names to tensors / numeric arrays of finite
    values: a NaN weight would otherwise surface as a non-finite loss after training has started."""
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model, dict):
        raise CheckpointReadError(f"Cannot read checkpoint {filename!r}: it holds no 'model' dict of tensors")
    for name, value in model.items():
        if isinstance(value, np.ndarray) and value.dtype.kind != "O":
            finite = value.dtype.kind not in "fc" or np.isfinite(value).all()
        elif isinstance(value, torch.Tensor):
            finite = not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
        else:
            kind = "numpy array of Python objects" if isinstance(value, np.ndarray) else type(value).__name__
            raise CheckpointReadError(f"Cannot read checkpoint {filename!r}: its entry {name!r} is a {kind}, "
                                      "not a tensor")
        if not finite:
            raise CheckpointReadError(f"Cannot read checkpoint {filename!r}: its entry {name!r} holds NaN or Inf")


def _newest_first(file_names):
    """``model_<iter>.pth`` / ``model_final.pth`` names, the highest iteration first, ``model_final`` before all."""
    def key(name):
        tag = _CHECKPOINT_NAME.match(name).group(1)
        return float("inf") if tag == "final" else int(tag)

    return sorted((n for n in file_names if _CHECKPOINT_NAME.match(n)), key=key, reverse=True)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves on local disks, fall-back to the newest readable checkpoint on
    resume, and load errors that name the file (module docstring)."""

    def _is_local(self):
        return "://" not in self.save_dir

    def _saved_checkpoints(self):
        """Paths of the ``model_*.pth`` files in the save folder, the newest first."""
        if not (self._is_local() and os.path.isdir(self.save_dir)):
            return []
        return [os.path.join(self.save_dir, n) for n in _newest_first(os.listdir(self.save_dir))]

    def has_checkpoint(self):
        """True when there is something to resume from: the ``last_checkpoint`` tag, or a saved ``model_*.pth``
        (a kill between a save and its tag). DefaultTrainer.resume_or_load asks this again after loading to
        decide whether to continue the iteration count, so both cases must answer True."""
        return super().has_checkpoint() or bool(self._saved_checkpoints())

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk or not self._is_local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # DetectionCheckpointer.load resets this only on success; a failed load would fail every later one.
            self._parsed_url_during_load = None

    def _load_file(self, filename):
        try:
            if filename.endswith(".pkl"):
                checkpoint = self._load_pkl(filename)
            else:
                checkpoint = super()._load_file(filename)  # .pth through _torch_load below
        except UnsafePickleError:
            raise  # refused, not damaged: not a CheckpointReadError, which resume would fall back past
        except Exception as error:
            raise CheckpointReadError(
                f"Cannot read checkpoint {filename!r} (truncated or not a checkpoint?): "
                f"{type(error).__name__}: {error}"
            ) from error
        _check_model_values(checkpoint, filename)
        return checkpoint

    def _load_pkl(self, filename):
        """DetectionCheckpointer._load_file's ``.pkl`` branch (Detectron2 model zoo format, else a Caffe2 /
        Detectron1 file), with the restricted unpickler in place of its ``pickle.load``."""
        data = load_pickle(filename, allow_hint=_WEIGHTS_HINT)
        if not isinstance(data, dict):
            raise TypeError(f"it holds a {type(data).__name__}, not a dict of weights")
        if "model" in data and "__author__" in data:
            self.logger.info("Reading a file from '%s'", data["__author__"])
            return data
        if "blobs" in data:  # detection models have "blobs", ImageNet models do not
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f):
        return load_torch_file(f, allow_hint=_WEIGHTS_HINT)

    def resume_or_load(self, path, *, resume=True):
        if not (resume and self._is_local() and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        saved = self._saved_checkpoints()
        tag_file = os.path.join(self.save_dir, "last_checkpoint")
        if super().has_checkpoint():
            tagged = self.get_checkpoint_file()
        else:
            # Killed between writing a checkpoint and tagging it: the newest one is the run's last.
            tagged = saved[0]
            logger.warning("%s is missing; resuming from the newest checkpoint, %s", tag_file, tagged)
        candidates = [tagged] + [p for p in saved if os.path.abspath(p) != os.path.abspath(tagged)]
        for candidate in candidates:
            if not os.path.isfile(candidate):
                logger.warning("Cannot resume from %s: no such file; trying the next newest checkpoint", candidate)
                continue
            # A read error happens in _load_file, before anything is loaded into the model or the trainer.
            try:
                extra = self.load(candidate)
            except CheckpointReadError as error:
                logger.warning("Cannot resume from %s: %s; trying the next newest checkpoint", candidate, error)
                continue
            if candidate != tagged:
                logger.warning("Resumed from %s, not from the unreadable %s", candidate, tagged)
            return extra
        raise CheckpointReadError(
            f"Cannot resume: no readable checkpoint in {self.save_dir!r} (tried {candidates}); run without "
            f"--resume to start over, or restore a checkpoint"
        )
