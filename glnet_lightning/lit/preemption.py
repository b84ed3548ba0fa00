"""Save ``last.ckpt`` when the job is told to stop (SIGTERM: SLURM pre-emption, ``scancel``, ``kill``).

Why: Lightning 2.6 only notes a SIGTERM (``trainer.received_sigterm``) and, once the current batch
is finished, raises ``SIGTERMException`` out of the loops — without saving anything, so a
pre-empted job loses everything since its last epoch-end checkpoint. This callback catches that
exception in ``on_exception``, i.e. after the batch, its optimizer step, the EMA update and the
progress counters are all complete, and writes the regular ``last.ckpt`` (atomically, through the
Trainer's checkpoint IO). ``--ckpt_path last`` then resumes at exactly that step. Every DDP rank
receives the exception at the same batch (Lightning broadcasts the signal), so the collective save
is safe.

SLURM: Lightning's own auto-requeue uses a different signal. With ``#SBATCH --signal=USR1@120``
Lightning saves ``hpc_ckpt_N.ckpt`` in the run directory and calls ``scontrol requeue``; SLURM then
ends the job with SIGTERM, and this callback writes ``last.ckpt`` as well. A requeued job resumes
from ``hpc_ckpt_N.ckpt`` when started without ``--ckpt_path`` (Lightning's SLURM default) and from
``last.ckpt`` with ``--ckpt_path last`` — both hold the state of a finished step. Pre-emption alone
(``#SBATCH --requeue``, no USR1) needs only this callback and ``--ckpt_path last`` in the job script.
"""
from __future__ import annotations

import os

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["PreemptionCheckpoint"]


class PreemptionCheckpoint(Callback):
    """On ``SIGTERMException`` during ``fit``, save ``<checkpoint dir>/last.ckpt``; remembers path and step."""

    def __init__(self) -> None:
        self.saved_path: str | None = None
        self.saved_step: int | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        callback = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
        if callback is not None and callback.dirpath:
            path = os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
            # written on the ModelCheckpoint's behalf: its saved state must say so, or the resumed run
            # would find a "foreign" last.ckpt and write last-v1.ckpt beside it
            callback.last_model_path = path
        else:
            path = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
        trainer.save_checkpoint(path)
        self.saved_path, self.saved_step = path, trainer.global_step
        rank_zero_info(f"SIGTERM: saved {path} at global step {trainer.global_step}")
