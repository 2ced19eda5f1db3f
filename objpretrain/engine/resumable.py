"""A DefaultTrainer mixin whose ``--resume`` continues the exact data stream and, on one process, the random
state of the training step.

Detectron2's ``resume_or_load`` restores model, optimizer, scheduler and iteration, but its sampler starts its
shuffled stream again, and the process RNGs (RPN and RoI sampling draw from torch's) start fresh. With this
mixin and a loader from ``objpretrain.data.build`` (``loader.resumable_sampler``) the checkpoint records the
stream's seed, and a resume at iteration i starts the stream at sample ``i * SOLVER.IMS_PER_BATCH``; on one
process the checkpoint also holds the Python, NumPy and torch (CPU and CUDA) RNG states, restored on resume.
Under DDP each rank has its own RNG states and only rank 0 saves, so there the step RNGs are not restored.
"""
import logging
import random

import numpy as np
import torch
from detectron2.utils import comm

__all__ = ["ResumableDataStreamMixin"]

logger = logging.getLogger(__name__)


def _rng_state():
    """The process RNG states as tensors and numbers only, so checkpoints stay loadable with torch.load's
    ``weights_only=True``."""
    py_version, py_keys, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": py_version, "keys": torch.tensor(py_keys, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state):
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["keys"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if not state["cuda"]:
        return
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    else:
        logger.warning("The checkpoint holds the RNG states of %d CUDA devices and this process sees %d: they are "
                       "not restored, so the step's random sampling after the resume differs from the "
                       "uninterrupted run's", len(state["cuda"]), torch.cuda.device_count())


class ResumableDataStreamMixin:
    """Put before ``DefaultTrainer`` in the bases; ``build_train_loader`` must return a loader with a
    ``resumable_sampler`` (module docstring)."""

    def _resumable_sampler(self):
        """The loader's resumable sampler, or None for a loader without one (e.g. in tests)."""
        return getattr(self.data_loader, "resumable_sampler", None)

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, then the data stream continues at the first sample of ``start_iter``
        (``start_iter * SOLVER.IMS_PER_BATCH``), with the stream seed the checkpoint recorded."""
        self._pending_rng_state = None
        super().resume_or_load(resume=resume)
        sampler = self._resumable_sampler()
        if sampler is not None:
            sampler.set_start(self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)
            if self.start_iter:
                logger.info("Data stream resumes at sample %d (iteration %d, stream seed %d)",
                            sampler.start, self.start_iter, sampler.seed)
        if self._pending_rng_state is not None:
            # Creating the loader's iterator draws its workers' base seed from torch's RNG. The uninterrupted run
            # did that before its first step, so do it now (after set_start: workers copy the sampler), and
            # only then restore the states the checkpoint saved after its last step.
            self._trainer._data_loader_iter  # noqa: B018  (Detectron2 creates the iterator on first access)
            _set_rng_state(self._pending_rng_state)
            self._pending_rng_state = None

    def state_dict(self):
        ret = super().state_dict()
        sampler = self._resumable_sampler()
        if sampler is not None:
            ret["data_stream"] = {"seed": sampler.seed, "ims_per_batch": self.cfg.SOLVER.IMS_PER_BATCH}
        if comm.get_world_size() == 1:
            ret["rng_state"] = _rng_state()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if comm.get_world_size() == 1 and "rng_state" in state_dict:
            self._pending_rng_state = state_dict["rng_state"]  # restored by resume_or_load, see there
        sampler, stream = self._resumable_sampler(), state_dict.get("data_stream")
        if sampler is None or stream is None:
            return
        if stream["seed"] != sampler.seed:
            # A run with SEED < 0 draws a new seed at every start; the checkpoint's keeps the stream the same.
            logger.warning("Data stream seed %d (from cfg.SEED) replaced by the checkpoint's %d, so the resumed run "
                           "continues the same stream", sampler.seed, stream["seed"])
            sampler.seed = stream["seed"]
        if stream["ims_per_batch"] != self.cfg.SOLVER.IMS_PER_BATCH:
            logger.warning("SOLVER.IMS_PER_BATCH changed from %d to %d since the checkpoint: the resumed data stream "
                           "starts at iteration x the new batch size", stream["ims_per_batch"],
                           self.cfg.SOLVER.IMS_PER_BATCH)
