"""Collate function that turns uint8 grayscale samples into normalised 3-channel batches.

Why a collate and not a per-sample transform: the whole batch is converted,
resized, augmented and normalised in a handful of tensor ops inside the
DataLoader worker, instead of ``batch_size`` separate PIL round trips. It is a
top-level class so it pickles into spawned worker processes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .tensor_ops import normalize_batch, random_crop_flip, resize_batch

__all__ = ["GrayscaleBatchCollate"]


class GrayscaleBatchCollate:
    """Stack ``(image uint8 (H, W), label)`` samples into ``(float (B, 3, S, S), int64 (B,))``.

    ``train=True`` adds a random crop with ``padding`` zero pixels and a random
    horizontal flip (on the resized image, before normalisation so the padding
    is black like the Fashion-MNIST background).
    """

    def __init__(
        self,
        image_size: int,
        mean: float,
        std: float,
        train: bool = False,
        padding: int | None = None,
        channels: int = 3,
    ) -> None:
        self.image_size = int(image_size)
        self.mean = float(mean)
        self.std = float(std)
        self.train = bool(train)
        self.padding = max(1, self.image_size // 8) if padding is None else int(padding)
        self.channels = int(channels)

    def __call__(self, samples: Sequence[tuple[torch.Tensor, torch.Tensor | int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([torch.as_tensor(s[0]) for s in samples])
        labels = torch.as_tensor([int(s[1]) for s in samples], dtype=torch.int64)
        return self.transform(images), labels

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) or (B, 1, H, W) -> normalised float32 (B, channels, S, S)."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        x = images.to(torch.float32).div_(255.0)
        x = resize_batch(x, self.image_size)
        if self.train:
            x = random_crop_flip(x, self.padding)
        x = normalize_batch(x, [self.mean], [self.std])
        return x.expand(-1, self.channels, -1, -1).contiguous()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, mean={self.mean}, std={self.std}, "
            f"train={self.train}, padding={self.padding}, channels={self.channels})"
        )
