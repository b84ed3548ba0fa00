"""AdamW parameter groups of the recipe: decay only on weight matrices / conv kernels.

Why: decaying norm scales, biases, the clustering temperature ``tau`` or learned slots pulls them
towards zero for no regularisation benefit (they are not "capacity"); the model names the
non-1-D ones itself via ``no_weight_decay()``. The split is timm's
``param_groups_weight_decay`` (1-D tensors and ``*.bias`` excluded, plus the named list).
"""
from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

__all__ = ["no_weight_decay_names", "build_param_groups", "build_adamw"]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names the model and every module inside it ask to exclude from weight decay (``no_weight_decay()``), under
    their names in ``model``: a GLNet wrapped by a segmentation model or a detector keeps its exclusions."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{name}" if prefix else name for name in fn()}
    return names


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, ``weight_decay=0`` (norms, biases, ``no_weight_decay()`` names) and ``weight_decay``;
    each group also carries ``name`` ("no_decay" / "decay") for logging and tests."""
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay_names(model))
    for group in groups:
        group["name"] = "no_decay" if group["weight_decay"] == 0 else "decay"
    return groups


def build_adamw(model: nn.Module, lr: float, weight_decay: float,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(build_param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)
