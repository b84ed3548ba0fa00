"""A map-style dataset over images already held in memory as one tensor.

Why: Fashion-MNIST fits in ~50 MB as uint8; indexing a tensor is the cheapest
possible ``__getitem__``, and forked DataLoader workers share it copy-on-write.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["InMemoryImageDataset"]


class InMemoryImageDataset(Dataset):
    """``(uint8 image (H, W), int64 label)`` pairs taken from ``images[i]``, ``labels[i]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]
