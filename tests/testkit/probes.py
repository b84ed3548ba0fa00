"""Callbacks the tests inject into real runs by class path (``--trainer.callbacks+=testkit.probes.X``), in
process and in subprocesses (``testkit.subprocess_env`` puts tests/ on their path).

Not a test module. Each one records something, or provokes something at a chosen step; the failure
itself (NaN loss, full disk, killed writer) then happens for real in the code under test.
"""
from __future__ import annotations

import os
import time

import torch
from lightning.pytorch import Callback

class RecordBatches(Callback):
    """Per rank: the training batches seen and the final weights, saved to ``seen-rank<k>.pt``."""

    def __init__(self) -> None:
        self.labels: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images, labels = batch
        self.labels.append(labels.detach().cpu().clone())
        self.images.append(images.detach().flatten(1).sum(1).cpu().clone())

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save({"labels": self.labels, "images": self.images, "state_dict": state,
                    "world_size": trainer.world_size, "global_step": trainer.global_step},
                   os.path.join(trainer.default_root_dir, f"seen-rank{trainer.global_rank}.pt"))


class MarkProgress(Callback):
    """Writes the global step where training (re)started and, after every batch, the current step
    (rank 0 only: the ranks share the run directory)."""

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        with open(os.path.join(trainer.default_root_dir, "start-steps.txt"), "a") as handle:
            handle.write(f"{trainer.global_step}\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero:
            return
        path = os.path.join(trainer.default_root_dir, "progress.txt")
        with open(path + ".tmp", "w") as handle:
            handle.write(str(trainer.global_step))
        os.replace(path + ".tmp", path)


class HoldAfterStep(Callback):
    """After optimizer step ``step``, touch ``held-at-<step>`` in the run directory (rank 0) and wait there,
    every rank, until the process is told to stop: the test then signals a run that is at a known step
    instead of racing a running one. A SIGKILL ends the wait with the process; after a SIGTERM
    (``trainer.received_sigterm``, or under DDP ``PreemptionCheckpoint.requested``) the batch finishes and
    Lightning stops as it would have. Checkpoint
    callbacks run after this one, so nothing of the step is saved before the hold."""

    def __init__(self, step: int, timeout: float = 600) -> None:
        self.step = step
        self.timeout = timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        if trainer.is_global_zero:
            open(os.path.join(trainer.default_root_dir, f"held-at-{self.step}"), "w").close()
        deadline = time.monotonic() + self.timeout  # a test that died must not leave the run waiting forever
        noted = lambda: any(getattr(cb, "requested", False) for cb in trainer.callbacks)  # noqa: E731 (DDP)
        while not (trainer.received_sigterm or noted()) and time.monotonic() < deadline:
            time.sleep(0.02)


class PoisonBatch(Callback):
    """Fill the images of the batch that starts at ``at_step`` with NaN: the forward pass, the loss
    and everything after it see a real NaN."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            batch[0].fill_(float("nan"))


class DumpRestoredState(Callback):
    """At the start of training, save what was restored (step, optimizer, EMA, weights) to ``restored.pt``."""

    def on_train_start(self, trainer, pl_module):
        ema = pl_module.ema.state_dict() if pl_module.ema is not None else None
        torch.save({"global_step": trainer.global_step, "optimizer": trainer.optimizers[0].state_dict(),
                    "ema": ema, "state_dict": pl_module.state_dict(),
                    "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict()},
                   os.path.join(trainer.default_root_dir, "restored.pt"))


class StallCheckpointWrite(Callback):
    """While ``last.ckpt`` of step ``at_step`` is being written, stop after the first bytes reached its
    temp file and touch ``writing.marker``, so the test can SIGKILL the run mid-write."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_step != self.at_step:
            return
        from glnet_lightning.lit import checkpoint_io

        original = checkpoint_io._RecordingWriter.write
        marker = os.path.join(trainer.default_root_dir, "writing.marker")

        def write(writer, data):
            written = original(writer, data)
            if ".last.ckpt." not in os.readlink(f"/proc/self/fd/{writer.handle.fileno()}"):
                return written
            writer.handle.flush()
            open(marker, "w").close()
            time.sleep(120)  # the test kills the process here
            return written

        checkpoint_io._RecordingWriter.write = write


class FillDisk(Callback):
    """At the start of epoch ``at_epoch``, fill the file system of the checkpoint directory.

    With ``RELIABILITY_TMPFS`` set the run's checkpoint directory is a small tmpfs (the test mounts
    it in a user namespace): a filler file takes all but a few KiB, so the next checkpoint write
    fails with a real ENOSPC. Without it (no user namespaces), checkpoint temp files are opened on
    ``/dev/full``, whose writes fail with ENOSPC from the kernel as well.
    """

    def __init__(self, at_epoch: int = 1) -> None:
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != self.at_epoch:
            return
        directory = trainer.checkpoint_callback.dirpath
        if os.environ.get("RELIABILITY_TMPFS"):
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            with open(os.path.join(directory, "filler.bin"), "wb") as handle:
                handle.write(b"\0" * max(0, free - 8192))
            return
        import tempfile

        from glnet_lightning.lit import checkpoint_io

        def mkstemp(prefix="", suffix="", dir=None):
            path = os.path.join(dir, f"{prefix}devfull{suffix}")
            os.symlink("/dev/full", path)
            return os.open(path, os.O_WRONLY), path

        checkpoint_io.tempfile = type("DevFullTempfile", (), {"mkstemp": staticmethod(mkstemp)})
        assert tempfile.mkstemp is not mkstemp  # only the checkpoint writer is redirected


class HoldFirstBatch(Callback):
    """At the run's first training batch, touch ``in-training.marker`` in the run directory, then wait until
    the file ``release`` exists (at most ``timeout`` s). A test then knows its runs are inside training
    and may act on them (kill one) before it lets the others go; once ``release`` exists, nothing waits."""

    MARKER = "in-training.marker"

    def __init__(self, release: str, timeout: float = 600) -> None:
        self.release = release
        self.timeout = timeout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if os.path.exists(self.release):
            return
        open(os.path.join(trainer.default_root_dir, self.MARKER), "w").close()
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(self.release):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.release} was never created")
            time.sleep(0.05)
