"""Callbacks the CLI tests inject into subprocess runs (``--trainer.callbacks+=run_probe.X``).

Not a test module: the tests put this directory on the subprocesses' PYTHONPATH.
"""
from __future__ import annotations

import os

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
