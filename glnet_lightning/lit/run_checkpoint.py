"""``ModelCheckpoint`` whose ``last.ckpt`` really is the last state.

Why: since Lightning 2.6, ``save_last=True`` writes ``last.ckpt`` only at steps where a top-k
checkpoint was written too. Once the monitored metric stops improving, ``last.ckpt`` stays at the
best epoch, and ``--ckpt_path last`` after a crash silently throws away every later epoch. And
when validation runs inside an epoch, the end of ``fit`` (``max_steps``, a time limit, early
stopping) saves nothing, so the last steps of training are in no checkpoint. This subclass writes
``last.ckpt``

- at every regular checkpoint point (same cadence, same skip rules), improved or not;
- when training ends, whatever ended it;
- every ``last_every_n_steps`` optimizer steps and/or every ``last_every_minutes`` of training, so
  a pre-empted or killed ImageNet run loses minutes, not an epoch. These refresh only
  ``last.ckpt``: the best-by-``val/acc1`` checkpoint keeps its per-validation cadence (Lightning's
  own ``every_n_train_steps`` / ``train_time_interval`` would replace that cadence).
"""
from __future__ import annotations

import time

from lightning.pytorch.callbacks import ModelCheckpoint

from .lightning_internals import last_checkpoint_skipped, save_last_checkpoint, saves_on_train_epoch_end

__all__ = ["RunCheckpoint"]


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` + ``last.ckpt`` at each checkpoint point, at the end and on a step/time cadence.

    Args:
        last_every_n_steps: also refresh ``last.ckpt`` every N optimizer steps (None: off).
        last_every_minutes: also refresh ``last.ckpt`` after this many minutes of training since
            the previous one (None: off); the decision of rank 0 is broadcast under DDP.
        **kwargs: :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s arguments.
    """

    def __init__(self, *args, last_every_n_steps: int | None = None, last_every_minutes: float | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise ValueError(f"checkpoint.last_every_n_steps must be >= 1 (or null), got {last_every_n_steps}")
        if last_every_minutes is not None and last_every_minutes <= 0:
            raise ValueError(f"checkpoint.last_every_minutes must be > 0 (or null), got {last_every_minutes}")
        self.last_every_n_steps = last_every_n_steps
        self.last_every_minutes = last_every_minutes
        self._last_refresh = time.monotonic()

    def _refresh_last(self, trainer) -> None:
        if self.save_last and not last_checkpoint_skipped(self, trainer):  # skipped too if this step is saved
            save_last_checkpoint(self, trainer)
        self._last_refresh = time.monotonic()

    def _ensure_last(self, trainer) -> None:
        every = self.every_n_epochs or 0
        if every >= 1 and (trainer.current_epoch + 1) % every == 0:
            self._refresh_last(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_refresh = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        due = bool(self.last_every_n_steps) and trainer.global_step % self.last_every_n_steps == 0
        if self.last_every_minutes is not None:
            late = time.monotonic() - self._last_refresh >= 60 * self.last_every_minutes
            due = due or bool(trainer.strategy.broadcast(late))  # every rank must join the same save
        if due:
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if saves_on_train_epoch_end(self, trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not saves_on_train_epoch_end(self, trainer):
            self._ensure_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)
