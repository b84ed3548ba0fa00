"""``ModelCheckpoint`` whose ``last.ckpt`` really is the last state.

Why: since Lightning 2.6, ``save_last=True`` writes ``last.ckpt`` only at steps where a top-k
checkpoint was written too. Once the monitored metric stops improving, ``last.ckpt`` stays at the
best epoch, and ``--ckpt_path last`` after a crash silently throws away every later epoch. This
subclass writes ``last.ckpt`` at every regular checkpoint point (same cadence, same skip rules),
whether or not the score improved.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["RunCheckpoint"]


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` + ``last.ckpt`` at each epoch's checkpoint point (see the module doc)."""

    def _ensure_last(self, trainer) -> None:
        due = self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        if (self.save_last is True and due and self._last_global_step_saved != trainer.global_step
                and not self._should_skip_saving_checkpoint(trainer)):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)
