"""Load a model for the slot figures from either kind of checkpoint, with the input it expects.

Why one loader for both: a user compares a run of ours (a Lightning ``.ckpt`` of ``GLNetModule``,
which rebuilds its model from the saved hyper-parameters) with a published reference checkpoint
(a state dict, loaded through timm's ``pretrained_cfg_overlay=dict(file=...)`` path, which
converts the reference names). Both give a model plus the preprocessing it was trained with.
"""
from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from glnet_lightning.errors import UserError
from glnet_lightning.lit.checkpoint_io import read_checkpoint

__all__ = ["CheckpointError", "LoadedModel", "Preprocess", "lightning_preprocess", "load_model", "model_kwargs_arg"]


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, or cannot be turned into a model."""


def model_kwargs_arg(text: str) -> dict:
    """argparse type of ``--model-kwargs``: the JSON object :func:`load_model` takes as ``model_kwargs``."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"num_slots\": 49}'")
    return value


@dataclass(frozen=True)
class Preprocess:
    """How to feed photos: square ``size``, normalisation, and whether the model saw grey images."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool = False


@dataclass
class LoadedModel:
    model: nn.Module
    preprocess: Preprocess
    label: str  # short name for figure titles: file name and training step when known


def lightning_preprocess(checkpoint: dict[str, Any]) -> Preprocess:
    """Normalisation of the data module the run trained with (its class attributes), at its image size.

    A data module with equal channel means trained on grey images expanded to three channels
    (Fashion-MNIST), so photos are converted to grey first.
    """
    hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    class_path = hparams.get("_class_path")
    if class_path:
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
            mean, std = tuple(getattr(cls, "mean", mean)), tuple(getattr(cls, "std", std))
        except (ImportError, AttributeError):
            pass
    grayscale = len(set(mean)) == 1
    return Preprocess(size=int(hparams.get("image_size") or 224), mean=mean, std=std, grayscale=grayscale)


def _from_lightning(path: Path, checkpoint: dict[str, Any], ema: bool | None) -> LoadedModel:
    from glnet_lightning.lit import GLNetModule

    try:
        module = GLNetModule.load_from_checkpoint(path, map_location="cpu")
    except Exception as exc:  # a checkpoint of another LightningModule, or a stale one
        raise CheckpointError(f"{path} is not a GLNetModule checkpoint that this version can load: {exc}") from exc
    model = module.model
    if ema is None:  # auto: the averaged weights when the run kept them
        ema = module.ema_model is not None
    if ema:
        if module.ema_model is None:
            raise CheckpointError(f"{path} has no EMA weights (the run trained without ema_decay)")
        model = module.ema_model
    step = checkpoint.get("global_step")
    label = f"{path.name}" + (f" (step {step})" if step is not None else "") + (" EMA" if ema else "")
    return LoadedModel(model.eval(), lightning_preprocess(checkpoint), label)


def _from_state_dict(path: Path, state: dict[str, Any], model_name: str | None,
                     model_kwargs: dict[str, Any] | None) -> LoadedModel:
    import timm

    from glnet_lightning.models.official import (
        convert_official_state_dict, identify_published_model, is_official_state_dict, unwrap_state_dict)

    weights = unwrap_state_dict(state)
    if model_name is None:
        converted = convert_official_state_dict(weights) if is_official_state_dict(weights) else weights
        model_name = identify_published_model(converted)
        if model_name is None:
            raise CheckpointError(f"{path} is a state dict of no published GLNet; give the model name "
                                  "(glnet_stl, glnet_4g, ...) and its constructor arguments")
    head = weights.get("head.weight")
    kwargs = {"num_classes": int(head.shape[0]) if head is not None else 1000, **(model_kwargs or {})}
    try:
        model = timm.create_model(model_name, pretrained=True, **kwargs,
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=kwargs["num_classes"]))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot load {path} as {model_name}: {exc}") from exc
    cfg = model.pretrained_cfg
    preprocess = Preprocess(size=int(cfg.get("input_size", (3, 224, 224))[-1]), mean=tuple(cfg["mean"]),
                            std=tuple(cfg["std"]))
    return LoadedModel(model.eval(), preprocess, f"{path.name} ({model_name})")


def load_model(path: str | Path, model_name: str | None = None, model_kwargs: dict[str, Any] | None = None,
               ema: bool | None = False) -> LoadedModel:
    """A GLNet from a ``fit`` checkpoint (``.ckpt`` of ``GLNetModule``) or a state dict file.

    For a state dict, ``model_name`` (and ``model_kwargs`` for a non-default size) pick the timm
    model; a published reference checkpoint is recognised without them. ``ema``: the averaged
    weights of a ``fit`` checkpoint; None takes them when the checkpoint has them (the label ends
    in "EMA" then) and a state dict as it is.
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path, CheckpointError)
    if "hyper_parameters" in checkpoint and "state_dict" in checkpoint:
        if model_name is not None or model_kwargs:
            raise CheckpointError(f"{path} is a Lightning checkpoint: it names its own model; drop the model name")
        return _from_lightning(path, checkpoint, ema)
    if ema:
        raise CheckpointError(f"{path} is a plain state dict: it has no separate EMA weights")
    return _from_state_dict(path, checkpoint, model_name, model_kwargs)
