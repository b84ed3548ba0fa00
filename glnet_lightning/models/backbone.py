"""The description of a network as data: what a run records, and the one way from it to a model.

Why a description and not a model name plus a dict of keyword arguments: a dict holds only the
overrides a config happened to give, so the network a run trained with depended on the code's
defaults on the day. A :class:`Backbone` is a typed dataclass holding every value that decides
the network; LightningCLI parses, documents (``--help``) and checks it field by field, the run's
``config.yaml`` and its checkpoint hold all of it, and :meth:`Backbone.build` makes the model.

Forms accepted wherever a description is given (:func:`resolve_backbone`): a description object;
a name (``glnet_stl``: the named GLNet descriptions in ``models/glnet.py``; any other timm model
name becomes :class:`TimmModel`); or the ``{"class_path": ..., "init_args": {...}}`` dict that
:meth:`Backbone.describe` writes and LightningCLI reads. Edits (``num_slots=49``) go on top.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import timm
import torch
import yaml
from torch import nn

__all__ = ["Backbone", "TimmModel", "named_backbones", "register_backbone", "resolve_backbone", "check_backbone"]

# name -> description class, for the one-word form (``glnet_stl``); models/glnet.py registers its named models
_NAMED: dict[str, type] = {}


def register_backbone(name: str, cls: type) -> type:
    """Make ``cls`` (a :class:`Backbone` subclass) the description called ``name`` in configs and specs."""
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"{cls!r} is not a Backbone description")
    _NAMED[name] = cls
    return cls


def named_backbones() -> list[str]:
    """The names a description can be given by (the published GLNet models)."""
    return list(_NAMED)

# Set by the module: the classifier width comes from the data, stochastic depth is part of the recipe.
_RESERVED = ("num_classes", "drop_path_rate", "pretrained")


class Backbone(abc.ABC):
    """Base of network descriptions: frozen-in-spirit dataclasses whose fields are the whole network."""

    @abc.abstractmethod
    def build(self, num_classes: int = 1000, drop_path_rate: float = 0.0, **timm_kwargs: Any) -> nn.Module:
        """The model this describes, with ``num_classes`` outputs; ``timm_kwargs`` go to
        ``timm.create_model`` (``pretrained=True``, ``pretrained_cfg_overlay``, ``features_only``)."""

    @property
    def name(self) -> str:
        """Short name for run directories and figure titles."""
        return type(self).__name__

    def settings(self) -> dict[str, Any]:
        """Every field with its value, as plain data."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def describe(self) -> dict[str, Any]:
        """The ``class_path`` / ``init_args`` form that checkpoints store and :func:`resolve_backbone` reads back."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.settings()}

    def as_spec(self) -> str:
        """``NAME:key=value,...`` with the fields that differ from ``NAME``'s defaults: the syntax of
        ``glnet bench`` specs and ``--model`` options, short enough for a message."""
        name = next((n for n, c in _NAMED.items() if c is type(self)), type(self).__name__)
        defaults = type(self)().settings()
        changed = {k: v for k, v in self.settings().items() if defaults.get(k) != v}
        flow = lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()  # noqa: E731
        return name + (":" + ",".join(f"{k}={flow(v)}" for k, v in changed.items()) if changed else "")

    def replace(self, **edits: Any) -> Backbone:
        """A copy with some fields changed; an unknown field is a ``ValueError`` naming the valid ones."""
        _check_fields(type(self), edits)
        return dataclasses.replace(self, **edits)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_fields(cls: type, settings: Mapping[str, Any]) -> None:
    allowed = [f.name for f in dataclasses.fields(cls)]
    reserved = sorted(k for k in settings if k in _RESERVED)
    if reserved:
        raise ValueError(f"{reserved} are not part of a backbone description: set them on the module "
                         "(model.num_classes, model.drop_path_rate)")
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting(s) {unknown}; its settings are {allowed}")


@dataclass
class TimmModel(Backbone):
    """Any other timm model, by name, with its constructor arguments (e.g. a baseline beside GLNet).

    Args:
        model_name: a name ``timm.list_models()`` knows.
        kwargs: constructor arguments of that model.
    """

    model_name: str = "resnet18"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not timm.is_model(self.model_name):
            raise ValueError(f"unknown timm model {self.model_name!r}; GLNet models are {named_backbones()}")
        reserved = sorted(k for k in self.kwargs if k in _RESERVED)
        if reserved:
            raise ValueError(f"TimmModel.kwargs must not set {reserved}: use model.num_classes / model.drop_path_rate")

    @property
    def name(self) -> str:
        return self.model_name

    def build(self, num_classes: int = 1000, drop_path_rate: float = 0.0, **timm_kwargs: Any) -> nn.Module:
        try:
            return timm.create_model(self.model_name, num_classes=num_classes, drop_path_rate=drop_path_rate,
                                     **self.kwargs, **timm_kwargs)
        except TypeError as exc:  # an argument the model does not take
            raise ValueError(f"model {self.model_name!r} rejected kwargs {sorted(self.kwargs)}: {exc}") from exc


def _import(path: str) -> type:
    if "." not in path:  # a short name, as LightningCLI accepts: a named model or a Backbone subclass
        cls = _NAMED.get(path) or next((c for c in _subclasses(Backbone) if c.__name__ == path), None)
        if cls is not None:
            return cls
        raise ValueError(f"unknown backbone {path!r}; use a named model ({', '.join(named_backbones())}), "
                         "GLNetArgs, TimmModel or a full class path")
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"backbone class_path {path!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ValueError(f"backbone class_path {path!r} is not a Backbone description")
    return cls


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def resolve_backbone(spec: Any, **edits: Any) -> Backbone:
    """A description from any accepted form (see the module docstring), with ``edits`` applied."""
    if isinstance(spec, Backbone):
        return spec.replace(**edits) if edits else spec
    if hasattr(spec, "as_dict") and hasattr(spec, "class_path"):  # a jsonargparse Namespace
        spec = spec.as_dict()
    if isinstance(spec, str):
        if spec in _NAMED or "." in spec or any(c.__name__ == spec for c in _subclasses(Backbone)):
            spec = {"class_path": spec}
        elif timm.is_model(spec):
            return TimmModel(spec, dict(edits))
        else:
            raise ValueError(f"unknown model {spec!r}; GLNet models are {named_backbones()} (any other timm model "
                             "name also works)")
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(f"a backbone is a model name, a description or a {{class_path, init_args}} mapping; got {spec!r}")
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(f"backbone mapping has unknown key(s) {unknown}; use class_path and init_args")
    cls = _import(str(spec["class_path"]))
    settings = {**dict(spec.get("init_args") or {}), **edits}
    _check_fields(cls, settings)
    return cls(**settings)


def check_backbone(backbone: Backbone, num_classes: int = 1000, drop_path_rate: float = 0.0) -> nn.Module:
    """Build ``backbone`` without allocating weights where possible (meta device), so a bad description
    fails in a second, before any data is read; returns the model for further checks (its stride).

    Constructors that read tensor values while building cannot run on the meta device; they are
    built for real on the CPU instead.
    """
    try:
        with torch.device("meta"):
            return backbone.build(num_classes, drop_path_rate)
    except ValueError:
        raise
    except (NotImplementedError, RuntimeError):
        pass
    return backbone.build(num_classes, drop_path_rate)
