"""Weights files: read any of our layouts, choose the raw or the EMA weights, convert, check the fit, load.

Why one module: timm's ``pretrained=True`` path, ``--model.init_weights``, ``glnet export`` / ``glnet viz``
and the resume check all read the same files. With one reader, one vocabulary (``auto|raw|ema``) and
one fit check, they take the same tensors from the same file and explain a mismatch the same way.

``auto`` takes what the file's authors evaluate: the raw weights of a published / reference / plain
file (the reference evaluates ``checkpoint["model"]``, not ``model_ema``), the EMA of a ``fit``
checkpoint that has one (our recipe validates it as ``val_ema/*``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from glnet_lightning.errors import UserError

from .backbone import resolve_backbone
from .official import convert_official_state_dict, identify_published_model, is_official_state_dict

__all__ = ["EMA_CHECKPOINT_KEY", "WEIGHTS_CHOICES", "Weights", "WeightsError", "is_fit_checkpoint", "load_weights",
           "classifier_note", "mismatch", "read_checkpoint", "read_weights", "training_settings",
           "weights_from", "with_own_classifiers"]

#: Where a ``fit`` checkpoint keeps the EMA weights (GLNetModule writes it, this module reads it).
EMA_CHECKPOINT_KEY = "ema_state_dict"
WEIGHTS_CHOICES = ("auto", "raw", "ema")

# Where other checkpoints nest their weights (the reference / DeiT-style and timm's train script), in order.
_NESTED = {"raw": ("model", "state_dict"), "ema": ("model_ema", "state_dict_ema")}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
_SHOWN = 3


class WeightsError(UserError, ValueError):
    """A weights file that is missing or unreadable, lacks the weights asked for, or does not fit the model."""


def read_checkpoint(path: str | os.PathLike, error: type[Exception] = WeightsError,
                    name: str = "checkpoint", missing: str = "") -> dict[str, Any]:
    """The mapping saved in the file ``path`` (tensors on the CPU).

    Any problem with the file raises ``error`` naming it as ``name`` (``init_weights file``,
    ``checkpoint``), so the user sees what to fix instead of torch's unpickling traceback;
    ``missing`` ends the message for a file that does not exist (what to do instead).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        last = path.with_name("last.ckpt")
        if path.name.startswith("best") and last.is_file() and not missing:  # a run that has not validated yet
            missing = f"; a run writes {path.name} at its first validation, use {last} (its latest state)"
        raise error(f"{name} {path} does not exist{missing}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise error(f"cannot read {name} {path}: {exc}") from exc
    if not isinstance(checkpoint, dict):
        raise error(f"{name} {path} holds a {type(checkpoint).__name__}, not a checkpoint or state dict")
    return checkpoint


def is_fit_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """A Lightning checkpoint (``glnet fit``): ``state_dict`` with ``model.`` keys and ``hyper_parameters``."""
    return isinstance(checkpoint.get("state_dict"), Mapping) and "hyper_parameters" in checkpoint


@dataclass(frozen=True)
class Weights:
    """One set of weights taken from a file, under our parameter names, and where it came from."""

    state_dict: dict[str, torch.Tensor]
    kind: str  # "raw" or "ema"
    key: str | None  # where in the file ("model", "model_ema", "ema_state_dict", ...); None: the file itself
    source: str  # the file (or "the state dict" for one given in memory)
    hyper_parameters: Mapping[str, Any] | None = None  # a fit checkpoint's
    step: int | None = None

    def describe(self) -> str:
        """E.g. 'the raw weights (model) of glnet_4g.pth', 'the EMA weights of best.ckpt (step 120)'."""
        what = "the EMA weights" if self.kind == "ema" else "the raw weights"
        name = Path(self.source).name if self.source != "the state dict" else self.source
        if self.hyper_parameters is not None:
            return f"{what} of {name}" + (f" (step {self.step})" if self.step is not None else "")
        return f"{what} ({self.key}) of {name}" if self.key else f"{what} of {name} (a plain state dict)"


def _kinds(checkpoint: Mapping[str, Any]) -> dict[str, str | None]:
    """kind -> where the file keeps it, for the kinds the file has."""
    if is_fit_checkpoint(checkpoint):
        kinds: dict[str, str | None] = {"raw": "state_dict"}
        if isinstance(checkpoint.get(EMA_CHECKPOINT_KEY), Mapping):
            kinds["ema"] = EMA_CHECKPOINT_KEY
        return kinds
    kinds = {kind: next(k for k in keys if isinstance(checkpoint.get(k), Mapping))
             for kind, keys in _NESTED.items() if any(isinstance(checkpoint.get(k), Mapping) for k in keys)}
    return kinds or {"raw": None}


def _has(kinds: dict[str, str | None]) -> str:
    return " and ".join(f"the {'EMA' if kind == 'ema' else 'raw'} weights ({key or 'a plain state dict'})"
                        for kind, key in kinds.items())


def _choose(choice: str, kinds: dict[str, str | None], fit: bool, source: str, option: str) -> str:
    if choice not in WEIGHTS_CHOICES:
        raise WeightsError(f"{option} {choice!r}: choose one of {', '.join(WEIGHTS_CHOICES)}")
    if choice == "auto":
        return "ema" if fit and "ema" in kinds else ("raw" if "raw" in kinds else "ema")
    if choice not in kinds:
        why = " (its run trained without ema_decay)" if fit and choice == "ema" else ""
        other = next(iter(kinds))
        raise WeightsError(f"{source} has no {'EMA' if choice == 'ema' else 'raw'} weights{why}: it has "
                           f"{_has(kinds)}; pass {option} {other} or {option} auto")
    return choice


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.removeprefix("module.").removeprefix("_orig_mod.")
        out[key] = value
    return out


def weights_from(checkpoint: Mapping[str, Any], choice: str = "auto", *, source: str = "the state dict",
                 option: str = "--weights") -> Weights:
    """The ``choice`` (``auto|raw|ema``) weights of a loaded file, under our names.

    ``option`` names the setting that chose them, for the error that says what to pass instead.
    """
    fit = is_fit_checkpoint(checkpoint)
    kinds = _kinds(checkpoint)
    kind = _choose(choice, kinds, fit, source, option)
    key = kinds[kind]
    if fit and kind == "raw":
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        if not state:
            raise WeightsError(f"{source} is a Lightning checkpoint without 'model.' weights: not one of GLNetModule")
    else:
        state = _strip_wrappers(checkpoint[key] if key else checkpoint)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source} holds no state dict: expected tensors, or weights under one of "
                           f"{[k for keys in _NESTED.values() for k in keys]}; its keys: {list(state)[:6]}")
    if is_official_state_dict(state):
        try:
            state = convert_official_state_dict(state)
        except ValueError as exc:
            raise WeightsError(f"{source}: {exc}") from exc
    hp = checkpoint.get("hyper_parameters") if fit else None
    return Weights(state, kind, key, source, dict(hp or {}) if fit else None,
                   checkpoint.get("global_step") if fit else None)


def read_weights(path: str | os.PathLike, choice: str = "auto", *, what: str = "weights",
                 option: str = "--weights", missing: str = "") -> Weights:
    """The ``choice`` weights of the file ``path`` (see :func:`weights_from`); ``what`` names the file in errors,
    ``missing`` ends the message for a file that does not exist."""
    if choice not in WEIGHTS_CHOICES:  # before reading a possibly large file
        raise WeightsError(f"{option} {choice!r}: choose one of {', '.join(WEIGHTS_CHOICES)}")
    path = Path(path).expanduser()
    return weights_from(read_checkpoint(path, WeightsError, f"{what} file", missing), choice, source=str(path),
                        option=option)


# ------------------------------------------------------------------------------------------------ fit
def _conventions(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """timm's classifier and first-conv module names of ``model`` (its pretrained_cfg), or ('head',), ()."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier, first_conv = cfg.get("classifier", "head"), cfg.get("first_conv")
    as_tuple = lambda v: (v,) if isinstance(v, str) else tuple(v or ())  # noqa: E731
    return as_tuple(classifier), as_tuple(first_conv)


def _under(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(f"{n}.") for n in names)


def _listing(keys: list[str], describe) -> str:
    shown = ", ".join(describe(k) for k in keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def training_settings(hyper_parameters: Mapping[str, Any] | None) -> str:
    """' It was trained with model.backbone=NAME:key=value,..., model.num_classes=N: use those settings.'
    for a fit checkpoint's hyper-parameters (the network's description, in the syntax ``--model`` takes)."""
    hp = hyper_parameters or {}
    shown = []
    if hp.get("backbone") is not None:
        try:
            shown.append(f"model.backbone={resolve_backbone(hp['backbone']).as_spec()}")
        except (ValueError, TypeError):  # a description this version cannot read: as it is stored
            shown.append(f"model.backbone={hp['backbone']}")
    if "num_classes" in hp:
        shown.append(f"model.num_classes={hp['num_classes']}")
    return f" It was trained with {', '.join(shown)}: use those settings." if shown else ""


def _published_fit(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The published model whose keys and shapes the state dict has: the stem suggests one, building it
    on the meta device (shapes without weights) confirms."""
    backbone = {k.removeprefix("model."): v for k, v in state_dict.items()}
    name = identify_published_model(backbone)
    if name is None:
        return None
    import timm

    with torch.device("meta"):
        model = timm.create_model(name)
    return name if _differences(backbone, model, strict=False) is None else None


def _differences(state_dict: Mapping[str, Any], model: nn.Module, strict: bool) -> str | None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    first_convs: tuple[str, ...] = ()
    if not strict:
        classifiers, first_convs = _conventions(model)
        expected = {k: s for k, s in expected.items() if not _under(k, classifiers)}
        given = {k: s for k, s in given.items() if not _under(k, classifiers)}
    adaptable = {f"{c}.weight" for c in first_convs}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(given) if given[k] != expected[k] and not (
        k in adaptable and len(given[k]) == 4 and given[k][:1] + given[k][2:] == expected[k][:1] + expected[k][2:]))
    if not (missing or unexpected or reshaped):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listing(missing, lambda k: f'{k} {list(expected[k])}')}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected, lambda k: f'{k} {list(given[k])}')}")
    if reshaped:
        parts.append(f"{len(reshaped)} key(s) of another shape: " + _listing(
            reshaped, lambda k: f"{k} {list(given[k])} in the checkpoint vs {list(expected[k])}"))
    return "; ".join(parts)


def mismatch(state_dict: Mapping[str, Any], model: nn.Module, *, strict: bool = False,
             hyper_parameters: Mapping[str, Any] | None = None) -> str | None:
    """None when ``state_dict`` fits ``model``, else one line: what differs (counts, first keys with
    shapes), the published model the weights do fit, and the settings a fit checkpoint was trained with.

    Not ``strict``: timm's conventions, so the classifier may differ (re-initialised) and so may the
    first conv's input channels (adapted).
    """
    differences = _differences(state_dict, model, strict)
    if differences is None:
        return None
    fits = _published_fit(state_dict)
    hint = f" The weights fit timm.create_model('{fits}', ...)." if fits else ""
    return f"{differences}.{hint}{training_settings(hyper_parameters)}"


# ----------------------------------------------------------------------------------------------- load
def _adapt(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """Apply timm's conventions in place (input channels adapted, a classifier of another shape left
    out so the model keeps its fresh one); returns the note for the log line, '' when nothing changed."""
    from timm.models import adapt_input_conv

    classifiers, first_convs = _conventions(model)
    for conv in first_convs:
        key = f"{conv}.weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key], base_chans=state[key].shape[1])
    reset = [c for c in classifiers if not _same_classifier(c, state, own)]
    if not reset:
        return ""
    weight = f"{reset[0]}.weight"
    given = f"{state[weight].shape[0]} classes" if weight in state else f"no {reset[0]}"
    mine = f"{own[weight].shape[0]}" if weight in own else "none (num_classes=0)"
    for key in [k for k in state if _under(k, tuple(reset))]:
        del state[key]
    return f"; {' and '.join(reset)} re-initialised: the file has {given}, the model {mine}"


def _same_classifier(name: str, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> bool:
    keys = {k for k in own if _under(k, (name,))} | {k for k in state if _under(k, (name,))}
    return all(k in state and k in own and state[k].shape == own[k].shape for k in keys)


def with_own_classifiers(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` plus the model's own tensors for the classifier keys it lacks (a token-labeling model
    started from weights without a token head): timm's loader is strict when the class counts agree."""
    classifiers, _ = _conventions(model)
    own = {k: v for k, v in model.state_dict().items() if _under(k, classifiers) and k not in state_dict}
    return {**state_dict, **own}


def classifier_note(weights: Weights, model: nn.Module) -> str:
    """The note :func:`load_weights` adds when the classifier is not taken from the file (timm's pretrained path)."""
    return _adapt(dict(weights.state_dict), model.state_dict(), model)


def load_weights(model: nn.Module, weights: Weights | str | os.PathLike, choice: str = "auto", *,
                 what: str = "weights", option: str = "--weights") -> str:
    """Load ``weights`` (a :class:`Weights`, or a file read with ``choice``) into ``model`` with timm's
    conventions; returns the log line saying which weights these are, e.g.
    'weights: the raw weights (model) of glnet_4g.pth; head re-initialised: the file has 1000 classes, the model 10'.

    A file that does not fit raises :class:`WeightsError` before the model is touched.
    """
    if not isinstance(weights, Weights):
        weights = read_weights(weights, choice, what=what, option=option)
    problem = mismatch(weights.state_dict, model, hyper_parameters=weights.hyper_parameters)
    if problem is not None:
        raise WeightsError(f"{what} {weights.source} does not fit {type(model).__name__}: {problem}")
    own = model.state_dict()
    state = dict(weights.state_dict)
    note = _adapt(state, own, model)
    model.load_state_dict(state, strict=not note)
    return f"{what}: {weights.describe()}{note}"
