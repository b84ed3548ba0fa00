"""Batch-level regularisers of the recipe: Mixup / CutMix and label smoothing (timm's).

Why here and not in the data module: both act on whole batches of images *and* targets, and the
training loss must match the target form they produce (soft targets after mixing, hard labels
otherwise), so the pair is built in one place.
"""
from __future__ import annotations

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

__all__ = ["build_mixup", "build_train_criterion"]


def build_mixup(num_classes: int, mixup: float, cutmix: float, prob: float, switch_prob: float,
                label_smoothing: float) -> Mixup | None:
    """timm ``Mixup`` (per batch), or None when both alphas or the probability are zero."""
    if mixup < 0 or cutmix < 0 or not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
        raise ValueError(f"need mixup >= 0, cutmix >= 0 and probabilities in [0, 1]; got mixup={mixup}, "
                         f"cutmix={cutmix}, mixup_prob={prob}, mixup_switch_prob={switch_prob}")
    if (mixup == 0 and cutmix == 0) or prob == 0:
        return None
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob, mode="batch",
                 label_smoothing=label_smoothing, num_classes=num_classes)


def build_train_criterion(mixing: bool, label_smoothing: float) -> nn.Module:
    """Soft-target CE when targets are mixed (smoothing is already inside them), else smoothed CE."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixing:
        return SoftTargetCrossEntropy()
    if label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return nn.CrossEntropyLoss()


def one_hot_smoothed(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Smoothed one-hot targets, for batches Mixup cannot take (odd size) while training with soft targets."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.unsqueeze(1), 1.0 - smoothing + off)
