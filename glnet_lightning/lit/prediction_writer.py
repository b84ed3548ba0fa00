"""Save ``predict`` outputs to one file, so ``glnet predict`` leaves something to read.

Why: LightningCLI's ``predict`` returns the predictions to Python and prints nothing; from the
command line they would be lost. The file holds ``{"probs": (N, C) float, "preds": (N,) int}``.

Detection (``DetectionModule``): each image is saved with its detections drawn as
``<default_root_dir>/predictions/<image>.png`` as its batch finishes (no image is kept in memory), and the
detections go to ``predictions.json`` in COCO's results format (image id, category id, box x y w h, score,
mask as RLE), the format COCO's evaluation tools read.

Segmentation (``SegmentationModule``): each image's predicted mask is saved as
``<default_root_dir>/predictions/<image>.png`` (one 0-based class index per pixel, at the image's size) as its
batch finishes.
"""
from __future__ import annotations

import json
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
        super().__init__(write_interval="batch_and_epoch")
        self.path = path
        self._results: list[dict[str, Any]] = []  # what a task module's write_predictions returned

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._results = []

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """A task module with ``write_predictions(prediction, folder)`` (segmentation, detection) writes its
        pictures now, batch by batch, and drops them from ``prediction`` (the predict loop keeps it until the
        epoch ends); the records it returns (COCO results) go to the epoch's JSON file."""
        write = getattr(pl_module, "write_predictions", None)
        if callable(write):
            folder = os.path.join(os.path.dirname(self._target(trainer)) or ".", "predictions")
            self._results += list(write(prediction, folder) or [])

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
        if callable(getattr(pl_module, "write_predictions", None)):  # written batch by batch
            if self._results:
                root, _ = os.path.splitext(self._target(trainer))
                with open(f"{root}.json.tmp", "w") as handle:
                    json.dump(self._results, handle)
                os.replace(f"{root}.json.tmp", f"{root}.json")
            return
        if not predictions:
            return
        merged = {key: torch.cat([p[key].cpu() for p in predictions]) for key in predictions[0]}
        atomic_torch_save(merged, self._target(trainer))
