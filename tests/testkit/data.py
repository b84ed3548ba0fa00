"""In-process Lightning helpers: a learnable synthetic data module, a quiet CPU Trainer, and the one
tiny fitted checkpoint (raw weights and EMA that differ) the weights, export and analysis tests read."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from . import tiny


class RandomImages(LightningDataModule):
    """``num_classes`` classes of square images whose mean brightness depends on the class."""

    def __init__(self, n: int = 128, batch_size: int = 16, image_size: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.batch_size = batch_size  # GLNetModule scales its learning rate by the data module's batch size
        self.num_classes = num_classes
        g = torch.Generator().manual_seed(1)
        labels = torch.arange(n) % num_classes
        images = torch.randn(n, 3, image_size, image_size, generator=g) * 0.5
        images += (labels.float() / num_classes).view(-1, 1, 1, 1)
        self.dataset = TensorDataset(images, labels)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader


def make_trainer(root: Path, **kwargs: Any) -> Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or sanity check; ``kwargs`` override."""
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    default_root_dir=str(root))
    defaults.update(kwargs)
    return Trainer(**defaults)


def fit_tiny(folder: Path, num_classes: int = 4, steps: int = 2, **module_kwargs: Any):
    """The tiny GLNet trained ``steps`` steps at lr 0.5 with EMA decay 0.5 (raw and EMA weights differ
    clearly), saved as ``folder/run.ckpt``; returns ``(path, module)``."""
    from glnet_lightning.lit import GLNetModule
    from glnet_lightning.models.glnet import glnet_stl

    settings = dict(num_classes=num_classes, ema_decay=0.5, mixup=0.0, cutmix=0.0, slot_map_every_n_epochs=0,
                    warmup_epochs=0, lr=0.5, **module_kwargs)
    module = GLNetModule(glnet_stl(**tiny()), **settings)
    trainer = make_trainer(folder, max_steps=steps, max_epochs=None)
    trainer.fit(module, datamodule=RandomImages(n=8 * steps, batch_size=4, num_classes=num_classes))
    path = Path(folder) / "run.ckpt"
    trainer.save_checkpoint(path)
    return path, module.eval()
