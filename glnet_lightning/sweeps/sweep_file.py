"""Sweep files: named variants, each a set of LightningCLI dotted-key overrides on one base config.

Why this shape: an ablation table is "the base recipe, changed in one place per row", so the file
names the base config once and every variant lists only what it changes (plus the paper's figures
for that row, so the table can print them beside ours). Format::

    base: configs/imagenet_glnet_stl.yaml   # relative to the repository (or to the sweep file)
    variants:
      - name: local_only
        label: local branch only            # optional, shown in the table
        overrides:
          model.backbone.global_branch: none   # a field of the network's description (models/backbone.py)
        paper: {gflops: 3.8, params_m: 26.4, throughput: 835.9, top1: 81.8}

A sweep may instead say ``variants_from: other.yaml`` (relative to itself) to run another file's
grid on a different base -- the same ablation on another data set or model size, not a copy of it.

Precedence when resolving a variant: base config < ``--set`` edits (they change the base, e.g.
a smaller model) < the variant's own overrides (they *are* the ablation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from glnet_lightning.config_edit import ConfigEditError, apply_edits, find_relative, load_config, read_yaml_mapping
from glnet_lightning.errors import close_matches

__all__ = ["PaperFigures", "Sweep", "SweepError", "Variant", "load_sweep", "read_sweep_yaml", "check_base"]

_PAPER_KEYS = ("gflops", "params_m", "throughput", "top1")


class SweepError(ConfigEditError):
    """A sweep file that cannot be used; the message names the culprit."""


def _did_you_mean(path: Path) -> str:
    """`` (did you mean sweeps/x.yaml?)`` for the YAML file named most like ``path`` beside it or in
    ``sweeps/`` (the folder the README's commands name), or nothing."""
    folders = dict.fromkeys(f for f in (path.parent, Path("sweeps")) if f.is_dir())
    candidates = {f / c.name: c.name for f in folders for c in sorted(f.glob("*.y*ml")) if f / c.name != path}
    match = close_matches(path.name, candidates.values())
    found = next((str(p) for p, name in candidates.items() if match and name == match[0]), None)
    return f" (did you mean {found}?)" if found else ""


def read_sweep_yaml(path: Path, what: str = "sweep file", error: type[ConfigEditError] = SweepError) -> dict:
    """The mapping in ``path``; a missing, unreadable or non-YAML file is one line naming it (``error``:
    the caller's kind of sweep error)."""
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise error(f"{what} {path} {state}{_did_you_mean(path)}")
    return read_yaml_mapping(path, what, error)


def check_base(base: Path, path: Path, from_option: bool, error: type[ConfigEditError] = SweepError) -> Path:
    """``base`` when it is a file, else one line: the ``--base`` option or the sweep file's ``base:`` at fault."""
    if base.is_file():
        return base
    if from_option:
        raise error(f"--base {base} does not exist{_did_you_mean(base)}")
    raise error(f"{path}: base config {base} does not exist{_did_you_mean(base)} (pass another with --base)")


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
        return apply_edits(self.sweep.base_config(), extra or {}, self.overrides)

    def build_model(self, num_classes: int = 1000, extra: Mapping[str, Any] | None = None):
        """The backbone ``fit`` would train for this variant (weights freshly initialised)."""
        from glnet_lightning.models.backbone import resolve_backbone

        model = self.config(extra).get("model") or {}
        if "backbone" not in model:
            raise SweepError(f"{self.sweep.path}: variant {self.name!r}: the config sets no model.backbone")
        try:
            return resolve_backbone(model["backbone"]).build(num_classes, float(model.get("drop_path_rate", 0.0)))
        except (ValueError, TypeError) as exc:
            raise SweepError(f"{self.sweep.path}: variant {self.name!r}: model.backbone: {exc}") from exc


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep file; ``base`` is the resolved path of the base config."""

    path: Path
    base: Path
    variants: list[Variant]

    def base_config(self) -> dict[str, Any]:
        """The base config with its sub-config files inlined (see :func:`~glnet_lightning.config_edit.load_config`)."""
        return load_config(self.base)

    def select(self, names: list[str] | None) -> list[Variant]:
        """The variants named (in file order), all of them when ``names`` is empty."""
        if not names:
            return list(self.variants)
        unknown = sorted(set(names) - {v.name for v in self.variants})
        if unknown:
            raise SweepError(f"unknown variant(s) {unknown}; {self.path} has {[v.name for v in self.variants]}")
        return [v for v in self.variants if v.name in names]


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
        raw = read_sweep_yaml(source, what=f"{path}: variants_from")
        path = source
    if not isinstance(raw, dict) or not isinstance(raw.get("variants"), list) or not raw["variants"]:
        raise SweepError(f"{path}: expected a mapping with a non-empty 'variants' list (or 'variants_from')")
    return raw["variants"]


def load_sweep(path: str | Path, base: str | Path | None = None) -> Sweep:
    """Read a sweep file; variants keep file order. ``base`` replaces the file's base config.

    Every mistake in the file or in ``base`` (missing, not YAML, no variants, a base config that does
    not exist) is a :class:`SweepError` naming the file, raised here, before anything runs."""
    path = Path(path)
    raw = read_sweep_yaml(path)
    variants = _raw_variants(raw, path)
    if base is None and not isinstance(raw.get("base"), str):
        raise SweepError(f"{path}: 'base' (the LightningCLI config the variants edit) is missing")
    sweep = Sweep(path=path, base=Path(base) if base is not None else find_relative(raw["base"], path), variants=[])
    sweep.variants.extend(_variant(v, i, sweep) for i, v in enumerate(variants))
    names = [v.name for v in sweep.variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"{path}: duplicate variant names {duplicates}")
    check_base(sweep.base, path, from_option=base is not None)
    return sweep
