"""A DefaultTrainer mixin whose ``--resume`` continues the exact data stream and, on one process, the random
state of the training step.

Detectron2's ``resume_or_load`` restores model, optimizer, scheduler and iteration, but its sampler starts its
shuffled stream again, and the process RNGs (RPN and RoI sampling draw from torch's) start fresh. With this
mixin and a loader from ``objpretrain.data.build`` (``loader.resumable_sampler``) the checkpoint records the
stream's seed, and a resume at iteration i starts the stream at global sample ``i * SOLVER.IMS_PER_BATCH``, on any
number of processes. The checkpoint also holds every rank's Python, NumPy and torch (CPU and CUDA) RNG states
(``rng_states``, one entry per rank, gathered from all ranks just before rank 0 saves): a resume on as many
processes restores each rank's own; on another number of processes the step RNGs are re-seeded per rank, with a
logged note (the data stream, a function of the global position, is the same either way).
"""
import logging
import random

import numpy as np
import torch
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..data.samplers import derive_seed

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


class _GatherRankRNGStates(HookBase):
    """On every rank, in an iteration whose end rank 0 checkpoints (Detectron2's PeriodicCheckpointer rule), sends
    this rank's RNG states to every rank (a collective, so every rank runs this hook, while only rank 0 has the
    checkpointer); the trainer's ``state_dict`` then saves them."""

    def __init__(self, period):
        self._period = period

    def after_step(self):
        iteration = self.trainer.iter
        if (iteration + 1) % self._period == 0 or iteration >= self.trainer.max_iter - 1:
            self.trainer._rank_rng_states = (iteration, comm.all_gather(_rng_state()))


class ResumableDataStreamMixin:
    """Put before ``DefaultTrainer`` in the bases; ``build_train_loader`` must return a loader with a
    ``resumable_sampler`` (module docstring)."""

    def _resumable_sampler(self):
        """The loader's resumable sampler, or None for a loader without one (e.g. in tests)."""
        return getattr(self.data_loader, "resumable_sampler", None)

    def register_hooks(self, hook_list):
        """Adds, under DDP, the hook that gathers every rank's RNG states for the checkpoint, at the same place on
        every rank: just before rank 0's checkpointer (before the evaluation or the writer on the other ranks)."""
        hook_list = [h for h in hook_list if h is not None]
        if comm.get_world_size() > 1:
            later = (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
            position = next((i for i, h in enumerate(hook_list) if isinstance(h, later)), len(hook_list))
            hook_list.insert(position, _GatherRankRNGStates(self.cfg.SOLVER.CHECKPOINT_PERIOD))
        super().register_hooks(hook_list)

    def resume_or_load(self, resume=True):
        """DefaultTrainer's, then the data stream continues at the first sample of ``start_iter``
        (``start_iter * SOLVER.IMS_PER_BATCH``), with the stream seed the checkpoint recorded."""
        self._pending_rng_state = None
        self._pending_rng_seed = None
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
        if self._pending_rng_seed is not None:
            self._trainer._data_loader_iter  # noqa: B018  (as above)
            seed_all_rng(self._pending_rng_seed)
            self._pending_rng_seed = None

    def state_dict(self):
        ret = super().state_dict()
        sampler = self._resumable_sampler()
        if sampler is not None:
            ret["data_stream"] = {"seed": sampler.seed, "ims_per_batch": self.cfg.SOLVER.IMS_PER_BATCH}
        if comm.get_world_size() == 1:
            ret["rng_states"] = [_rng_state()]
        else:
            iteration, states = getattr(self, "_rank_rng_states", (None, None))
            if iteration == self.iter:  # gathered for this save (a save at another moment has none)
                ret["rng_states"] = states
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # "rng_state": one process's, as checkpoints before the per-rank states held.
        states = state_dict.get("rng_states") or ([state_dict["rng_state"]] if "rng_state" in state_dict else None)
        world_size, rank = comm.get_world_size(), comm.get_rank()
        if states is not None and len(states) == world_size:
            self._pending_rng_state = states[rank]  # restored by resume_or_load, see there
        elif states is not None:
            self._pending_rng_seed = derive_seed(state_dict.get("data_stream", {}).get("seed", 0), self.iter, rank)
            logger.warning("The checkpoint holds the RNG states of %d processes and this run has %d: the data stream "
                           "continues at the same global position, and each rank's step RNGs are re-seeded "
                           "(rank %d: seed %d), so random choices inside the step differ from an uninterrupted run",
                           len(states), world_size, rank, self._pending_rng_seed)
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
