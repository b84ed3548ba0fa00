"""Build the backbone named by a config, turning every kind of bad value into a ``ValueError``.

Why: the CLI promises one clear error line for a bad config, and timm reports an unknown name as
``RuntimeError`` and an unknown keyword as ``TypeError``; here they all become ``ValueError`` whose
message names the model and the offending setting.
"""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

import glnet_lightning  # noqa: F401  (registers the GLNet models with timm)
from glnet_lightning.models import MODEL_NAMES

__all__ = ["create_backbone", "check_backbone_config"]

# Keys GLNetModule sets itself; giving them in model_kwargs too would be ambiguous.
_RESERVED = ("num_classes", "drop_path_rate", "pretrained")


def create_backbone(model_name: str, model_kwargs: dict[str, Any] | None, num_classes: int,
                    drop_path_rate: float) -> nn.Module:
    kwargs = dict(model_kwargs or {})
    clash = [k for k in _RESERVED if k in kwargs]
    if clash:
        raise ValueError(f"model_kwargs must not set {clash}: use the module's own arguments "
                         "(model.num_classes, model.drop_path_rate)")
    if not timm.is_model(model_name):
        raise ValueError(f"unknown model {model_name!r}; GLNet models are {list(MODEL_NAMES)} "
                         "(any other timm model name also works)")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    try:
        return timm.create_model(model_name, num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs)
    except TypeError as exc:  # unexpected / missing keyword in model_kwargs
        raise ValueError(f"model {model_name!r} rejected model_kwargs {sorted(kwargs)}: {exc}") from exc


def check_backbone_config(model_name: str, model_kwargs: dict[str, Any] | None, num_classes: int,
                          drop_path_rate: float) -> nn.Module:
    """Validate a config by building it without allocating weights where possible (meta device);
    returns the model so callers can check more (e.g. its total stride against the image size).

    Some constructors read tensor values while building and cannot run on the meta device; they
    are built for real on the CPU instead (a few seconds for the largest models).
    """
    try:
        with torch.device("meta"):
            return create_backbone(model_name, model_kwargs, num_classes, drop_path_rate)
    except ValueError:
        raise
    except (NotImplementedError, RuntimeError):
        pass  # the constructor needs real tensors: fall through
    return create_backbone(model_name, model_kwargs, num_classes, drop_path_rate)
