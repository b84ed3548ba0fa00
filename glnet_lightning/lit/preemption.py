"""Save ``last.ckpt`` when the job is told to stop (SIGTERM: SLURM pre-emption, ``scancel``, ``kill``).

Why: Lightning 2.6 only notes a SIGTERM (``trainer.received_sigterm``) and, once the current batch
is finished, raises ``SIGTERMException`` out of the loops — without saving anything, so a
pre-empted job loses everything since its last epoch-end checkpoint. This callback catches that
exception in ``on_exception``, i.e. after the batch, its optimizer step, the EMA update and the
progress counters are all complete, and writes the regular ``last.ckpt`` (atomically, through the
Trainer's checkpoint IO). ``--ckpt_path last`` then resumes at exactly that step. Only that
exception saves: any other error may come from the middle of a step, whose state must not replace
the last good checkpoint. (Lightning's ``OnExceptionCheckpoint`` and ``ModelCheckpoint(save_on_exception)``
do not make these choices: docs/architecture.md.)

SLURM: Lightning's own auto-requeue uses a different signal. With ``#SBATCH --signal=USR1@120``
Lightning saves ``hpc_ckpt_N.ckpt`` in the run directory and calls ``scontrol requeue``; SLURM then
ends the job with SIGTERM, and this callback writes ``last.ckpt`` as well. A requeued job resumes
from ``hpc_ckpt_N.ckpt`` when started without ``--ckpt_path`` (Lightning's SLURM default) and from
``last.ckpt`` with ``--ckpt_path last`` — both hold the state of a finished step. Pre-emption alone
(``#SBATCH --requeue``, no USR1) needs only this callback and ``--ckpt_path last`` in the job script.
"""
from __future__ import annotations

import os
import signal
import threading

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .lightning_internals import mark_sigterm_received, sigterm_handlers_besides_lightnings

__all__ = ["PreemptionCheckpoint"]


class PreemptionCheckpoint(Callback):
    """On ``SIGTERMException`` during ``fit``, save ``<checkpoint dir>/last.ckpt``; remembers path and step.

    Under DDP every rank must stop after the same batch, or their collectives stop pairing up (a hang,
    or gloo aborting a rank) before the collective save. Lightning 2.6's SIGTERM handler broadcasts from
    inside the signal handler, which pairs with whatever collective another rank is blocked in (a
    gradient all-reduce), and each rank also reads its own flag at the end of a batch, so a signal
    forwarded between two ranks' checks stops them at different batches. Here the handler only notes the
    signal (:attr:`requested`) and forwards it to the ranks this process launched; at the end of every
    batch one all-reduce tells all ranks whether any was asked to stop, and all set Lightning's flag
    together, so Lightning stops all of them after that batch.
    """

    def __init__(self) -> None:
        self.saved_path: str | None = None
        self.saved_step: int | None = None
        self.requested = False  # a SIGTERM reached this process (under DDP: not yet agreed by the ranks)

    def on_train_start(self, trainer, pl_module) -> None:
        self.requested = False
        if trainer.world_size < 2 or threading.current_thread() is not threading.main_thread():
            return
        others = sigterm_handlers_besides_lightnings(trainer)

        def note(signum, frame) -> None:
            if not self.requested and trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signum)  # rank 0 passes the notice on to the ranks it started
            self.requested = True
            for handler in others:
                if callable(handler):
                    handler(signum, frame)

        signal.signal(signal.SIGTERM, note)  # Lightning puts its original handlers back at teardown

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            mark_sigterm_received(trainer)  # on every rank at this batch: Lightning stops them all after it

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
