"""Model specs (``NAME`` or ``NAME:key=value,...``) and model creation.

Kept apart from the measurement code because both the main process and the
memory-probe subprocesses must build exactly the same model from the same text.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import timm
import torch.nn as nn

from glnet_lightning import config_edit
from glnet_lightning.errors import close_matches
from glnet_lightning.models.backbone import resolve_backbone

from .errors import BenchError


@dataclass(frozen=True)
class ModelSpec:
    """A timm model name plus constructor kwargs, remembered with its original text."""

    text: str
    name: str
    kwargs: dict = field(default_factory=dict)


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``name`` or ``name:key=value,key=value``; values are YAML, as in every ``KEY=VALUE`` of the project."""
    try:
        name, kwargs = config_edit.parse_model_spec(text)  # the project's one KEY=VALUE reader
    except config_edit.ConfigEditError as exc:
        raise BenchError(str(exc)) from exc
    return ModelSpec(text=text, name=name, kwargs=kwargs)


def check_model_names(specs: list[ModelSpec]) -> None:
    """Fail early, with close-match suggestions, on names timm does not know."""
    known = None
    for spec in specs:
        if timm.is_model(spec.name):
            continue
        known = known if known is not None else timm.list_models()
        close = close_matches(spec.name, known, n=5)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise BenchError(f"unknown model {spec.name!r}{hint}")


def _takes_img_size(model: nn.Module) -> bool:
    return "img_size" in inspect.signature(type(model).__init__).parameters


def _default_img_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return size[-1] if size else None


def build_model(spec: ModelSpec, img_size: int, num_classes: int) -> nn.Module:
    """Create the model for one image size (untrained weights: no downloads).

    Models whose constructor takes ``img_size`` (ViT, Swin, ...) are rebuilt for
    the requested size; the others are resolution-agnostic already.
    """
    try:
        description = resolve_backbone(spec.name, **spec.kwargs)  # the one way from a description to a model
        model = description.build(num_classes)
        if ("img_size" not in spec.kwargs and _takes_img_size(model)
                and _default_img_size(model) != img_size):
            model = description.build(num_classes, img_size=img_size)
    except Exception as exc:
        raise BenchError(f"cannot create {spec.text!r}: {type(exc).__name__}: {exc}") from exc
    return model
