"""Optuna sweep files: base config + search space + sampler/pruner + objectives + per-trial budget.

Why one file: a study is only resumable (and shareable by several workers) if every worker agrees
on what is searched and how a trial is trained, so all of it lives in one versioned YAML::

    base: configs/fashion_mnist.yaml          # relative to the repo (or to this file)
    study_name: slots_kernel_fashion_mnist
    runs_dir: runs/sweeps                     # trials in <runs_dir>/<study_name>/trial_NNNN
    search_space: {num_slots: [9, 16, 25], kernel_size: [3, 5, 7]}
    sampler: {name: tpe, seed: 0}             # tpe | random | grid | nsga2 | qmc (+ their kwargs)
    pruner: {name: median, n_warmup_steps: 1} # median | hyperband | successive_halving | percentile | none
    objectives:                               # val/acc1 alone, or with throughput / gmacs / params_m
      - {name: val/acc1, direction: maximize}
    budget: {trainer.max_epochs: 3}           # dotted LightningCLI keys applied to every trial
    n_trials: 20
    measure: {batch_size: 64, warmup: 2, repeats: 5}
    heartbeat: {interval: 60, grace_period: 180, max_retry: 1}

Precedence for a trial's config: base < ``budget`` < ``--set`` < the trial's parameters.

The search space (:func:`parse_space`): categorical parameters, each bound to a config key.

Why categorical only: the knobs worth searching here (slot number, depthwise kernel size) take a
handful of legal values -- slots must be square for pooled slot init -- so a choice list is both the
honest space and what lets the grid sampler enumerate it. Format (in the sweep file)::

    search_space:
      num_slots: [9, 16, 25, 36, 49, 64, 81]        # short form: the choices
      kernel_size: {choices: [3, 5, 7], per_stage: false, key: model.backbone.kernel_size}

``key`` defaults to ``model.backbone.<name>``. ``per_stage: true`` suggests one value per stage
(parameters ``<name>_stage1`` .. ``<name>_stage4``) and sets the key to the list of four.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glnet_lightning.config_edit import ConfigEditError, find_relative
from glnet_lightning.errors import UserError

from .sweep_file import check_base, read_sweep_yaml

__all__ = ["Param", "SearchSpace", "SpaceError", "parse_space", "Objective", "OptunaSweep", "OptunaSweepError",
           "load_optuna_sweep", "parse_objective", "MEASURED_METRICS"]


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
    key = raw.get("key") or f"model.backbone.{name}"
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


#: Objectives computed after the fit instead of read from the logged metrics.
MEASURED_METRICS = {"throughput": "maximize", "gmacs": "minimize", "params_m": "minimize"}

_KEYS = {"base", "study_name", "runs_dir", "search_space", "sampler", "pruner", "objectives", "budget",
         "n_trials", "timeout", "measure", "heartbeat", "skip_duplicates", "description"}


class OptunaSweepError(ConfigEditError):
    """A sweep file (or CLI option) that cannot be used; the message names the culprit."""


@dataclass(frozen=True)
class Objective:
    """A value to optimise: a logged metric (e.g. ``val/acc1``) or one of :data:`MEASURED_METRICS`."""

    name: str
    direction: str

    @property
    def measured(self) -> bool:
        return self.name in MEASURED_METRICS


@dataclass(frozen=True)
class OptunaSweep:
    path: Path
    base: Path
    study_name: str
    runs_dir: Path
    space: SearchSpace
    objectives: tuple[Objective, ...]
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    budget: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = 20
    timeout: float | None = None
    measure: dict[str, Any] = field(default_factory=dict)
    heartbeat: dict[str, Any] = field(default_factory=dict)
    skip_duplicates: bool = True

    @property
    def study_dir(self) -> Path:
        return self.runs_dir / self.study_name

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def parse_objective(raw: Any) -> Objective:
    """``{name, direction}``, ``"name"`` or ``"name:direction"``; measured metrics know their direction."""
    if isinstance(raw, str):
        name, _, direction = raw.partition(":")
        raw = {"name": name, "direction": direction or None}
    if not isinstance(raw, dict) or not raw.get("name"):
        raise OptunaSweepError(f"objective must be NAME[:DIRECTION] or {{name, direction}}, got {raw!r}")
    name = str(raw["name"])
    direction = raw.get("direction") or MEASURED_METRICS.get(name, "maximize")
    if direction not in ("maximize", "minimize"):
        raise OptunaSweepError(f"objective {name}: direction must be maximize or minimize, got {direction!r}")
    return Objective(name, direction)


def _mapping(raw: dict, key: str, default: dict) -> dict:
    value = raw.get(key)
    if value is None:
        return dict(default)
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise OptunaSweepError(f"{key} must be a mapping, got {value!r}")
    return dict(value)


def load_optuna_sweep(path: str | Path, *, base: str | Path | None = None, runs_dir: str | Path | None = None,
                      study_name: str | None = None, objectives: list[str] | None = None) -> OptunaSweep:
    """Read and validate a sweep file; keyword arguments override the file (CLI options)."""
    path = Path(path)
    raw = read_sweep_yaml(path, error=OptunaSweepError)
    unknown = set(raw) - _KEYS
    if unknown:
        raise OptunaSweepError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    if base is None and not raw.get("base"):
        raise OptunaSweepError(f"{path}: 'base' (the LightningCLI config each trial trains) is missing")
    base_path = check_base(Path(base) if base is not None else find_relative(str(raw["base"]), path), path,
                           from_option=base is not None, error=OptunaSweepError)
    try:
        space = parse_space(raw.get("search_space"))
    except ValueError as exc:
        raise OptunaSweepError(f"{path}: {exc}") from exc
    raw_objectives = objectives or raw.get("objectives") or ["val/acc1:maximize"]
    parsed = tuple(parse_objective(o) for o in raw_objectives)
    names = [o.name for o in parsed]
    if len(set(names)) != len(names):
        raise OptunaSweepError(f"{path}: duplicate objectives {names}")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or not all(isinstance(k, str) for k in budget):
        raise OptunaSweepError(f"{path}: budget must map dotted config keys to values")
    n_trials = raw.get("n_trials", 20)
    return OptunaSweep(
        path=path,
        base=base_path,
        study_name=str(study_name or raw.get("study_name") or path.stem),
        runs_dir=Path(runs_dir or raw.get("runs_dir") or "runs/sweeps"),
        space=space,
        objectives=parsed,
        sampler=_mapping(raw, "sampler", {"name": "tpe"}),
        pruner=_mapping(raw, "pruner", {"name": "median"}),
        budget=dict(budget),
        n_trials=None if n_trials is None else int(n_trials),
        timeout=None if raw.get("timeout") is None else float(raw["timeout"]),
        measure=dict(raw.get("measure") or {}),
        heartbeat=dict(raw.get("heartbeat") or {}),
        skip_duplicates=bool(raw.get("skip_duplicates", True)),
    )
