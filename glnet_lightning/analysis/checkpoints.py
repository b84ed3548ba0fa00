"""Load a model for the slot figures and exports from either kind of checkpoint, with the input it expects.

Why one loader for both: a user compares a run of ours (a Lightning ``.ckpt`` of ``GLNetModule``,
which rebuilds its model from the saved hyper-parameters) with a published reference checkpoint
(a state dict, for a timm model). Both give a model plus the preprocessing it was trained with; the
weights (``auto|raw|ema``) are chosen, converted and loaded by ``models/weights.py``, as for
``--model.init_weights``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from glnet_lightning.config_edit import ConfigEditError, parse_model_spec
from glnet_lightning.errors import UserError
from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.weights import Weights, WeightsError, load_weights, read_checkpoint, weights_from

__all__ = ["CheckpointError", "LoadedModel", "Preprocess", "lightning_preprocess", "load_model", "model_spec_arg"]

logger = logging.getLogger(__name__)


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, or cannot be turned into a model."""


def model_spec_arg(text: str) -> tuple[str, dict[str, Any]]:
    """argparse type of ``--model NAME[:key=value,...]``: the model of a state dict file and its settings,
    in the syntax of ``glnet bench`` specs (values read by ``config_edit``, as ``--set`` reads them)."""
    try:
        return parse_model_spec(text)
    except ConfigEditError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    size = hparams.get("image_size") or hparams.get("crop_size") or 224  # crop_size: a segmentation run's
    return Preprocess(size=int(size), mean=mean, std=std, grayscale=grayscale)


#: The task modules whose ``fit`` checkpoints :func:`load_model` can rebuild, by class name.
TASK_MODULES = ("GLNetModule", "SegmentationModule")


def _from_lightning(path: Path, checkpoint: dict[str, Any], tasks: tuple[str, ...]
                    ) -> tuple[nn.Module, Preprocess, str]:
    import glnet_lightning.lit as lit

    # a module named by class_path (LightningCLI's subclass mode) is recorded; classification configs name none
    name = str((checkpoint.get("hyper_parameters") or {}).get("_class_path", "GLNetModule")).rpartition(".")[2]
    if name not in tasks:
        raise CheckpointError(f"{path} is a checkpoint of {name}: this command takes those of {', '.join(tasks)}")
    try:
        module = getattr(lit, name).load_from_checkpoint(path, map_location="cpu")
    except Exception as exc:  # a checkpoint of another LightningModule, or a stale one
        raise CheckpointError(f"{path} is not a {name} checkpoint that this version can load: {exc}") from exc
    step = checkpoint.get("global_step")
    return module.model, lightning_preprocess(checkpoint), f"{path.name}" + (f" (step {step})" if step is not None else "")


def _from_state_dict(path: Path, weights: Weights, model: tuple[str, dict[str, Any]] | None
                     ) -> tuple[nn.Module, Preprocess, str]:
    from glnet_lightning.models.official import identify_published_model

    name, edits = model if model is not None else (identify_published_model(weights.state_dict), {})
    if name is None:
        raise CheckpointError(f"{path} is a state dict of no published GLNet; give its model as --model "
                              "NAME[:key=value,...] (e.g. glnet_stl:num_slots=16)")
    head = weights.state_dict.get("head.weight")
    try:  # the one way from a description to a model, as fit, the sweeps and glnet bench build it
        built = resolve_backbone(name, **edits).build(int(head.shape[0]) if head is not None else 1000)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot build {name} for {path}: {exc}") from exc
    cfg = built.pretrained_cfg
    preprocess = Preprocess(size=int(cfg.get("input_size", (3, 224, 224))[-1]), mean=tuple(cfg["mean"]),
                            std=tuple(cfg["std"]))
    return built, preprocess, f"{path.name} ({name})"


def load_model(path: str | Path, model: str | tuple[str, dict[str, Any]] | None = None, *,
               weights: str = "auto", tasks: tuple[str, ...] = ("GLNetModule",)) -> LoadedModel:
    """A GLNet from a ``fit`` checkpoint (``.ckpt`` of one of the ``tasks`` modules, :data:`TASK_MODULES`: a
    ``SegmentationModule`` gives its whole segmentation network) or a state dict file.

    For a state dict, ``model`` names its network: ``NAME[:key=value,...]`` (a named GLNet with settings
    changed, or any timm model with its arguments) or the parsed ``(name, edits)``; a published
    reference checkpoint is recognised without it. ``weights``: ``raw``,
    ``ema`` or ``auto`` (models/weights.py: the raw ``model`` of a published file, the EMA of a fit
    checkpoint that has one); the label ends in "EMA" for EMA weights.
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path, CheckpointError)
    chosen = weights_from(checkpoint, weights, source=str(path), option="--weights")
    if chosen.hyper_parameters is not None:
        if model is not None:
            raise CheckpointError(f"{path} is a Lightning checkpoint: it records its own model; drop --model")
        built, preprocess, label = _from_lightning(path, checkpoint, tasks)
    else:
        if isinstance(model, str):
            model = model_spec_arg(model)
        built, preprocess, label = _from_state_dict(path, chosen, model)
    try:
        line = load_weights(built, chosen)
    except WeightsError as exc:
        name = model[0] if model is not None else "the model"
        raise CheckpointError(f"cannot load {path} as {name}: {exc}") from exc
    logger.info(line)
    return LoadedModel(built.eval(), preprocess, label + (" EMA" if chosen.kind == "ema" else ""))
