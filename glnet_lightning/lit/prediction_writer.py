"""Save ``predict`` outputs to one file, so ``glnet predict`` leaves something to read.

Why: LightningCLI's ``predict`` returns the predictions to Python and prints nothing; from the
command line they would be lost. The file holds ``{"probs": (N, C) float, "preds": (N,) int}``.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from .checkpoint_io import atomic_torch_save

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Concatenate all prediction batches into ``path`` (default ``<default_root_dir>/predictions.pt``).

    Under DDP each rank writes ``predictions-rank<k>.pt`` (the distributed sampler pads and
    interleaves samples, so ranks are not merged here).
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def _target(self, trainer: Trainer) -> str:
        path = self.path or os.path.join(trainer.default_root_dir, "predictions.pt")
        if trainer.world_size > 1:
            root, ext = os.path.splitext(path)
            path = f"{root}-rank{trainer.global_rank}{ext}"
        return path

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders: keep the first
            predictions = predictions[0]
        if not predictions:
            return
        merged = {key: torch.cat([p[key].cpu() for p in predictions]) for key in predictions[0]}
        atomic_torch_save(merged, self._target(trainer))
