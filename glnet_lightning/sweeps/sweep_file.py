"""Sweep files: named variants, each a set of LightningCLI dotted-key overrides on one base config.

Why this shape: an ablation table is "the base recipe, changed in one place per row", so the file
names the base config once and every variant lists only what it changes (plus the paper's figures
for that row, so the table can print them beside ours). Format::

    base: configs/imagenet_glnet_stl.yaml   # relative to the repository (or to the sweep file)
    variants:
      - name: local_only
        label: local branch only            # optional, shown in the table
        overrides:
          model.model_kwargs.global_branch: none
          model.model_kwargs.num_slots: null   # null removes a shortcut the base may set
        paper: {gflops: 3.8, params_m: 26.4, throughput: 835.9, top1: 81.8}

A sweep may instead say ``variants_from: other.yaml`` (relative to itself) to run another file's
grid on a different base -- the same ablation on another data set or model size, not a copy of it.

Precedence when resolving a variant: base config < ``--set`` edits (they change the base, e.g.
a smaller model) < the variant's own overrides (they *are* the ablation).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["PaperFigures", "Sweep", "SweepError", "Variant", "apply_overrides", "inline_config_files", "load_sweep",
           "parse_assignment"]

_PAPER_KEYS = ("gflops", "params_m", "throughput", "top1")


class SweepError(ValueError):
    """A sweep file or an override that cannot be used; the message names the culprit."""


def inline_config_files(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a LightningCLI YAML config, replacing values that name a sub-config file by its contents.

    Why: a config may compose others (``trainer: imagenet/trainer_8gpu.yaml``), which
    LightningCLI resolves relative to the file that names them. A variant's resolved config is
    written into its run directory, where such relative paths no longer resolve, and ``--set``
    edits must reach keys inside the sub-config, so the sub-files are inlined first.
    """
    path = path.resolve()
    if path in _seen:
        raise SweepError(f"config files include each other in a cycle: {' -> '.join(map(str, (*_seen, path)))}")
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a config file must be a mapping of keys, not {type(config).__name__}")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, str) and node.endswith((".yaml", ".yml")) and (path.parent / node).is_file():
            return inline_config_files(path.parent / node, (*_seen, path))
        return node

    return inline(config)


@dataclass(frozen=True)
class PaperFigures:
    """The paper's figures for one row; ``None`` where the paper gives none (e.g. k-means top-1)."""

    gflops: float | None = None
    params_m: float | None = None
    throughput: float | None = None
    top1: float | None = None


@dataclass(frozen=True)
class Variant:
    """One row of the sweep: its name, its overrides and how to turn them into a config or model."""

    name: str
    overrides: dict[str, Any]
    paper: PaperFigures
    label: str
    sweep: "Sweep" = field(repr=False, compare=False)

    def config(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full LightningCLI config this variant trains with (``extra``: the ``--set`` edits)."""
        config = apply_overrides(self.sweep.base_config(), extra or {})
        return apply_overrides(config, self.overrides)

    def build_model(self, num_classes: int = 1000, extra: Mapping[str, Any] | None = None):
        """The backbone ``fit`` would train for this variant (weights freshly initialised)."""
        from glnet_lightning.lit.factory import create_backbone

        model = self.config(extra).get("model") or {}
        return create_backbone(model.get("model_name", "glnet_stl"), model.get("model_kwargs"), num_classes,
                               float(model.get("drop_path_rate", 0.0)))


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep file; ``base`` is the resolved path of the base config."""

    path: Path
    base: Path
    variants: list[Variant]

    def base_config(self) -> dict[str, Any]:
        """The base config with its sub-config files inlined (see :func:`inline_config_files`)."""
        if not self.base.is_file():
            raise SweepError(f"{self.path}: base config {self.base} does not exist (pass another with --base)")
        return inline_config_files(self.base)

    def select(self, names: list[str] | None) -> list[Variant]:
        """The variants named (in file order), all of them when ``names`` is empty."""
        if not names:
            return list(self.variants)
        unknown = sorted(set(names) - {v.name for v in self.variants})
        if unknown:
            raise SweepError(f"unknown variant(s) {unknown}; {self.path} has {[v.name for v in self.variants]}")
        return [v for v in self.variants if v.name in names]


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; the value is YAML (``[1,1,1,1]``, ``null``, ``4``, ``2e-3``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SweepError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise SweepError(f"{key}: value {value!r} is not valid YAML: {exc}") from exc
    return key.strip(), _yaml11_number(parsed)


def _yaml11_number(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``2e-3`` as a string; on the command line it means the number."""
    if isinstance(value, str) and any(c.isdigit() for c in value):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with each dotted key set; missing or null parents become mappings.

    A value replaces whatever was there (a mapping value is not merged), as on the LightningCLI
    command line. Setting a key through a non-mapping value is an error rather than a silent loss.
    """
    result = copy.deepcopy(dict(config))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = result
        for depth, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                where = ".".join(parents[:depth + 1])
                raise SweepError(f"cannot set {dotted}: {where} is {node[part]!r}, not a mapping")
            node = node[part]
        node[leaf] = copy.deepcopy(value)
    return result


def _find_base(base: str, sweep_path: Path) -> Path:
    """The base path is written relative to the repository; try the sweep file's folder and its parents."""
    candidate = Path(base)
    if candidate.is_absolute():
        return candidate
    for folder in (sweep_path.parent, *sweep_path.parent.parents):
        if (folder / candidate).is_file():
            return folder / candidate
    # Not there (yet): report it relative to the folder holding the sweeps directory, when used.
    return sweep_path.parent.parent / candidate


def _paper(raw: Any, where: str) -> PaperFigures:
    raw = raw or {}
    if not isinstance(raw, dict) or set(raw) - set(_PAPER_KEYS):
        raise SweepError(f"{where}: paper must be a mapping with keys among {list(_PAPER_KEYS)}, got {raw!r}")
    return PaperFigures(**{k: None if raw.get(k) is None else float(raw[k]) for k in _PAPER_KEYS})


def _variant(raw: Any, index: int, sweep: Sweep) -> Variant:
    where = f"{sweep.path}: variants[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise SweepError(f"{where}: each variant needs a name, got {raw!r}")
    unknown = set(raw) - {"name", "label", "overrides", "paper"}
    if unknown:
        raise SweepError(f"{where} ({raw['name']}): unknown keys {sorted(unknown)}")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise SweepError(f"{where} ({raw['name']}): overrides must map dotted keys to values")
    return Variant(name=raw["name"], overrides=dict(overrides), paper=_paper(raw.get("paper"), where),
                   label=str(raw.get("label") or raw["name"]), sweep=sweep)


def _raw_variants(raw: Any, path: Path) -> list:
    """The file's own ``variants`` list, or the one of the file named by ``variants_from``."""
    if isinstance(raw, dict) and isinstance(raw.get("variants_from"), str) and "variants" not in raw:
        source = path.parent / raw["variants_from"]
        with open(source) as handle:
            raw = yaml.safe_load(handle) or {}
        path = source
    if not isinstance(raw, dict) or not isinstance(raw.get("variants"), list) or not raw["variants"]:
        raise SweepError(f"{path}: expected a mapping with a non-empty 'variants' list (or 'variants_from')")
    return raw["variants"]


def load_sweep(path: str | Path, base: str | Path | None = None) -> Sweep:
    """Read a sweep file; variants keep file order. ``base`` replaces the file's base config."""
    path = Path(path)
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}
    variants = _raw_variants(raw, path)
    if base is None and not isinstance(raw.get("base"), str):
        raise SweepError(f"{path}: 'base' (the LightningCLI config the variants edit) is missing")
    sweep = Sweep(path=path, base=Path(base) if base is not None else _find_base(raw["base"], path), variants=[])
    sweep.variants.extend(_variant(v, i, sweep) for i, v in enumerate(variants))
    names = [v.name for v in sweep.variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"{path}: duplicate variant names {duplicates}")
    return sweep
