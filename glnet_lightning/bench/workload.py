"""What one benchmark step executes: inputs, precision context and the step itself.

Shared by the timing loop and the memory probe so that both measure exactly
the same work.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import BenchError
from .flops import first_tensor

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("infer", "train")


def check_precision(precision: str, device: torch.device) -> None:
    """fp16 autocast is only meaningful (and fast) on CUDA; say so instead of silently crawling."""
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise BenchError("--precision fp16 needs a CUDA device; on CPU use bf16 (or fp32)")


def autocast_for(precision: str, device: torch.device):
    """Autocast context for the precision; fp32 runs without autocast."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(model: nn.Module, mode: str, device: torch.device, channels_last: bool) -> nn.Module:
    """Move the model to the device/memory format and set train or eval mode."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train(mode == "train")


def make_batch(batch_size: int, img_size: int, num_classes: int, device: torch.device,
               channels_last: bool, seed: int = 0):
    """Random images and labels; the content does not matter, only the shapes."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, img_size, img_size, generator=generator).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, max(num_classes, 1), (batch_size,), generator=generator).to(device)
    return images, labels


def make_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mode: str,
              precision: str, device: torch.device) -> Callable[[], None]:
    """Return a zero-argument callable running one inference or one training step.

    Training is forward + cross-entropy + backward + AdamW step (with a grad
    scaler for fp16, as real fp16 training needs one).
    """
    if mode == "infer":
        def infer_step() -> None:
            with torch.inference_mode(), autocast_for(precision, device):
                model(images)
        return infer_step

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            loss = F.cross_entropy(first_tensor(model(images)).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return train_step
