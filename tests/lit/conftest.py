"""Fixtures for the Lightning-side tests: a tiny GLNet config, a synthetic learnable data module and
a quiet CPU Trainer factory (the repo runs pytest with --import-mode=importlib, so helpers live here)."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

TINY_KWARGS = dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64], head_dim=16,
                   stage_mixers=["glmix"] * 4, num_slots=4)


class RandomImages(LightningDataModule):
    """``num_classes`` classes of 32x32 images whose mean brightness depends on the class."""

    num_classes = 10

    def __init__(self, n: int = 128, batch_size: int = 16, image_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(1)
        labels = torch.arange(n) % self.num_classes
        images = torch.randn(n, 3, image_size, image_size, generator=g) * 0.5
        images += (labels.float() / self.num_classes).view(-1, 1, 1, 1)
        self.dataset = TensorDataset(images, labels)

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader


def make_trainer(root, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    default_root_dir=str(root))
    defaults.update(kwargs)
    return Trainer(**defaults)


@pytest.fixture
def tiny_kwargs() -> dict:
    return {k: list(v) if isinstance(v, list) else v for k, v in TINY_KWARGS.items()}


@pytest.fixture
def data() -> RandomImages:
    return RandomImages()


@pytest.fixture
def images_cls() -> type[RandomImages]:
    return RandomImages


@pytest.fixture(name="make_trainer")
def make_trainer_fixture():
    return make_trainer
