"""A run resumed from a mid-epoch checkpoint continues as if it had never stopped.

Why: Lightning saves the weights, optimizer, scheduler, step and (for stateful loaders such as
torchdata's ``StatefulDataLoader`` and litdata's ``StreamingDataLoader``) rank 0's loader
state. Three things are missing for an exact resume, and this callback adds them:

- every process's random state (torch, ``random``, numpy, CUDA): drop path, Mixup/CutMix and,
  with ``num_workers=0``, the augmentations draw from it; and the LightningModule's own generators
  (``random_generators()``, e.g. MixToken's boxes in GLNetModule). Saved per rank (gathered under DDP)
  and put back just before the first resumed batch.
- every rank's loader state, not only rank 0's: under DDP each rank has its own workers and
  their random states.
- the loader state itself: Lightning 2.6 builds the train loader before it reads the checkpoint
  when ``configure_optimizers`` asks for ``estimated_stepping_batches`` (Lightning issue 20550),
  and then never loads the saved state into it. It is loaded here, at ``on_train_start``, and
  the loader's iterator is made again from it.

A checkpoint from another number of processes resumes with a warning that the order and the
random state cannot be the saved ones.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from glnet_lightning.data.resumable import get_rng_states, set_rng_states

from .lightning_internals import (load_train_loader_states, restart_train_iterator, set_sampler_epoch,
                                  train_loader_states, train_loaders)

__all__ = ["ExactResume", "gather_objects"]


def gather_objects(trainer, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (this rank's alone outside DDP)."""
    if trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _module_generators(trainer) -> dict[str, torch.Generator]:
    """The LightningModule's own random generators by name (``random_generators()``), if it has any."""
    get = getattr(trainer.lightning_module, "random_generators", None)
    return get() if callable(get) else {}


def _set_random_states(trainer, saved: dict[str, Any]) -> None:
    set_rng_states({k: torch.as_tensor(v) for k, v in saved["rng"].items()})
    generators = _module_generators(trainer)
    for name, state in saved.get("generators", {}).items():
        if name in generators:
            generators[name].set_state(state)


class ExactResume(Callback):
    """Saves every rank's random and loader state in checkpoints; restores them when a fit resumes."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._fit_trainer = None

    def state_dict(self) -> dict[str, Any]:
        trainer = self._fit_trainer
        if trainer is None:  # never set up: nothing of a run to save
            return {}
        # all_gather_object pickles: tensors travel as CPU tensors and come back as such
        generators = {name: g.get_state() for name, g in _module_generators(trainer).items()}
        ranks = gather_objects(trainer, {"rng": get_rng_states(), "generators": generators,
                                  "loaders": train_loader_states(trainer)})
        return {"world_size": trainer.world_size, "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict or None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._fit_trainer = trainer  # state_dict() is called without the trainer

    def on_train_start(self, trainer, pl_module) -> None:
        saved, self._to_restore = self._to_restore, None
        fit_loop = trainer.fit_loop
        if saved is None:
            return
        if saved["world_size"] != trainer.world_size:
            rank_zero_warn(f"the checkpoint was written by {saved['world_size']} process(es), this run has "
                           f"{trainer.world_size}: the data order and random state of the resumed run are new ones")
            return
        mine = saved["ranks"][trainer.global_rank]
        loaders = train_loaders(trainer)
        if not mine["loaders"] or loaders is None:
            _set_random_states(trainer, mine)
            return
        progress = fit_loop.epoch_progress.current
        finished = any(state.get("_iterator_finished") for state in mine["loaders"])  # torchdata: began anew
        at_epoch_end = fit_loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches and not finished
        # saved once Lightning had counted the epoch as processed: it goes on in the next epoch with the
        # restored iterator, without asking for a new one
        continues_in_next_epoch = at_epoch_end and progress.processed == progress.started
        epoch = progress.processed - 1 if continues_in_next_epoch else progress.processed  # the saved position's
        for loader in loaders:  # the restored position is in this epoch's order
            set_sampler_epoch(loader, epoch)
        load_train_loader_states(trainer, mine["loaders"])
        restart_train_iterator(trainer)  # a new iterator, from the loaded state
        _set_random_states(trainer, mine)
        if continues_in_next_epoch:
            # so start that epoch here, as the uninterrupted run did, after the random state (a new iterator
            # draws its workers' seed from it). Saved before Lightning counted the epoch as processed (e.g. by
            # the validation at the epoch's end), Lightning closes the epoch itself and makes the next epoch's
            # iterator: a second one here would have the workers prefetch, and draw augmentations, for batches
            # that are thrown away.
            for loader in loaders:
                set_sampler_epoch(loader, epoch + 1)
            restart_train_iterator(trainer)
