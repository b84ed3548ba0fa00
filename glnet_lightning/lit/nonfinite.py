"""Guard against a NaN/inf training loss: stop the run, or skip the step without touching the state.

Why a guard: one non-finite loss back-propagates NaN into every weight and optimizer moment, and
the run then "trains" for days on garbage while checkpoints overwrite the last good state. The
guard looks at the loss before backward (one host sync per step) and, with the decision shared by
all ranks:

- ``stop`` raises :class:`TrainingDiverged` before the update, naming the global step and the last
  checkpoint — the weights in memory and on disk are still the last good ones;
- ``skip`` lets backward run (DDP needs every rank to join it), then drops the gradients so the
  optimizer changes nothing, restores the buffers the bad forward pass changed (BatchNorm running
  statistics) and tells :class:`GLNetModule` not to fold the step into the EMA. The batch still
  counts as a step for ``global_step`` and the lr schedule. Many skips in a row mean the run cannot
  recover, so the guard stops then.

Lightning's ``SpikeDetection`` looks at the loss only after the optimizer step has used it
(docs/architecture.md).
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["NONFINITE_POLICIES", "NonFiniteLossGuard", "TrainingDiverged", "last_checkpoint_of"]

NONFINITE_POLICIES = ("stop", "skip")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN/inf; the message says where and what was kept."""


def last_checkpoint_of(trainer) -> str | None:
    """The newest checkpoint this run can resume from: its last/best file, else the one it resumed from."""
    callback = trainer.checkpoint_callback
    for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""),
                 trainer.ckpt_path):
        if path:
            return str(path)
    return None


class NonFiniteLossGuard(Callback):
    """Watch the loss handed to backward; ``policy`` is ``"stop"`` or ``"skip"`` (see the module doc)."""

    def __init__(self, policy: str = "stop", max_consecutive_skips: int = 50) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite_loss must be one of {NONFINITE_POLICIES}, got {policy!r}")
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_steps = 0
        self._consecutive = 0
        self._pending = False
        self._buffers: list[torch.Tensor] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        pl_module.optimizer_step_skipped = False
        # buffers are small (norm statistics): cheap to copy. With gradient accumulation the copy from
        # before the first bad micro-batch is kept until the (skipped) optimizer step.
        if self.policy == "skip" and not self._pending:
            self._buffers = [b.detach().clone() for b in pl_module.buffers()]

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        value = loss.detach().float().flatten()[0].item()
        where = (f"global step {trainer.global_step} (epoch {trainer.current_epoch}, "
                 f"batch {trainer.fit_loop.epoch_loop.batch_idx})")
        self._consecutive += 1
        if self.policy == "stop" or self._consecutive > self.max_consecutive_skips:
            last = last_checkpoint_of(trainer)
            reason = ("stopped before the update, so the weights were not changed" if self.policy == "stop"
                      else f"{self._consecutive} steps in a row were skipped: the run is not recovering")
            raise TrainingDiverged(
                f"non-finite training loss ({value}) at {where}; {reason}. Last checkpoint: "
                f"{last or 'none saved yet'}. Lower model.lr, check the data for NaN/inf values, or set "
                "model.nonfinite_loss=skip; resume with --ckpt_path last")
        self._pending = True

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._pending:
            self._consecutive = 0
            return
        self._pending = False
        optimizer.zero_grad(set_to_none=True)  # no gradients: AdamW leaves weights and moments alone
        if self._buffers is not None:  # after backward, which may still need the buffers it saw
            with torch.no_grad():
                for saved, current in zip(self._buffers, pl_module.buffers()):
                    current.copy_(saved)
        pl_module.optimizer_step_skipped = True
        self.skipped_steps += 1
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        rank_zero_warn(f"non-finite training loss at global step {trainer.global_step}: step skipped "
                       f"({self.skipped_steps} so far)")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
