"""The Optuna search space of a sweep file: categorical parameters, each bound to a config key.

Why categorical only: the knobs worth searching here (slot number, depthwise kernel size) take a
handful of legal values -- slots must be square for pooled slot init -- so a choice list is both the
honest space and what lets the grid sampler enumerate it. Format (in the sweep file)::

    search_space:
      num_slots: [9, 16, 25, 36, 49, 64, 81]        # short form: the choices
      kernel_size: {choices: [3, 5, 7], per_stage: false, key: model.model_kwargs.kernel_size}

``key`` defaults to ``model.model_kwargs.<name>``. ``per_stage: true`` suggests one value per stage
(parameters ``<name>_stage1`` .. ``<name>_stage4``) and sets the key to the list of four.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glnet_lightning.cli.errors import UserError

__all__ = ["Param", "SearchSpace", "SpaceError", "parse_space"]

NUM_STAGES = 4


class SpaceError(UserError, ValueError):
    """A search space that cannot be used; the message names the parameter."""


@dataclass(frozen=True)
class Param:
    """One searched setting: its study name(s), its choices and the dotted config key it sets."""

    name: str
    choices: tuple
    key: str
    per_stage: bool = False

    @property
    def study_names(self) -> list[str]:
        """The parameter names as they appear in the study."""
        if self.per_stage:
            return [f"{self.name}_stage{i + 1}" for i in range(NUM_STAGES)]
        return [self.name]


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    def suggest(self, trial) -> dict[str, Any]:
        """Ask ``trial`` for every parameter; returns ``{dotted key: value}`` overrides."""
        overrides: dict[str, Any] = {}
        for param in self.params:
            values = [trial.suggest_categorical(n, list(param.choices)) for n in param.study_names]
            overrides[param.key] = values if param.per_stage else values[0]
        return overrides

    def grid(self) -> dict[str, list]:
        """``{study parameter name: choices}``, the form ``optuna.samplers.GridSampler`` wants."""
        return {n: list(p.choices) for p in self.params for n in p.study_names}

    def choices_of(self, study_name: str) -> tuple:
        for param in self.params:
            if study_name in param.study_names:
                return param.choices
        raise KeyError(study_name)


def _param(name: str, raw: Any) -> Param:
    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        raise SpaceError(f"search_space.{name}: expected a list of choices or a mapping, got {raw!r}")
    unknown = set(raw) - {"choices", "key", "per_stage"}
    if unknown:
        raise SpaceError(f"search_space.{name}: unknown keys {sorted(unknown)}")
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"search_space.{name}: 'choices' must be a non-empty list, got {choices!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise SpaceError(f"search_space.{name}: duplicate choices in {choices}")
    if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        raise SpaceError(f"search_space.{name}: choices must be numbers, strings, booleans or null")
    key = raw.get("key") or f"model.model_kwargs.{name}"
    return Param(name=name, choices=tuple(choices), key=str(key), per_stage=bool(raw.get("per_stage", False)))


def parse_space(raw: Any) -> SearchSpace:
    """Validate the ``search_space`` mapping of a sweep file."""
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"search_space must be a non-empty mapping of parameter name to choices, got {raw!r}")
    params = tuple(_param(str(name), value) for name, value in raw.items())
    keys = [p.key for p in params]
    if len(set(keys)) != len(keys):
        raise SpaceError(f"search_space: two parameters set the same config key ({keys})")
    return SearchSpace(params)
