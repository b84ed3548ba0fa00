"""Reading and editing LightningCLI config files as plain mappings: the one place that does it.

Why one module: the grid runner, the Optuna runner and anything else that writes a run's config
must resolve ``--set KEY=VALUE`` exactly as ``glnet fit --KEY VALUE`` would, or a sweep trains
something other than what the README's command trains. Three rules make that so:

- sub-config files are inlined (``trainer: imagenet/trainer_8gpu.yaml`` becomes the mapping in
  that file, resolved relative to the file naming it), so edits reach keys inside them and the
  written config no longer depends on where it is stored;
- values are YAML, with YAML 1.2 numbers (``2e-3`` is the float 0.002, as jsonargparse reads it);
- a dotted key that passes through a ``{class_path, init_args}`` block lands in ``init_args``
  (``data.root`` -> ``data.init_args.root``), which is LightningCLI's own shorthand; so does a key
  below a class given by name alone (``model.backbone.num_slots`` on ``backbone: glnet_stl``), and a
  class name set over such a block keeps its ``init_args``, as LightningCLI keeps the ones given, and a
  mapping without ``class_path`` set on it updates those ``init_args``, as on LightningCLI's command line.

Every failure is a :class:`ConfigEditError` whose message names the offending key or file.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from glnet_lightning.errors import UserError

__all__ = ["ConfigEditError", "load_config", "read_yaml_mapping", "parse_assignment", "parse_assignments", "parse_model_spec", "set_dotted",
           "apply_edits", "find_relative"]


class ConfigEditError(UserError, ValueError):
    """A config file or an edit that cannot be used; the message names the key or file at fault."""


def read_yaml_mapping(path: Path, what: str = "config", error: type[ConfigEditError] | None = None) -> dict[str, Any]:
    """The mapping of keys in the YAML file ``path``; an unreadable file, invalid YAML or another kind of
    document is one ``error`` line naming it as ``what`` (``config``, ``sweep file``)."""
    error = error or ConfigEditError
    try:
        with open(path) as handle:
            mapping = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(mapping, dict):
        raise error(f"{what} {path} must be a YAML mapping of keys, not {type(mapping).__name__}")
    return mapping


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A LightningCLI YAML config with every value that names a sub-config file replaced by its contents."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise ConfigEditError(f"config files include each other in a cycle: {' -> '.join(map(str, (*_seen, path)))}")
    config = read_yaml_mapping(path)

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, str) and node.endswith((".yaml", ".yml")) and (path.parent / node).is_file():
            return load_config(path.parent / node, (*_seen, path))
        return node

    return inline(config)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from a command line; the value is YAML (``[1,1,1,1]``, ``null``, ``4``, ``2e-3``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigEditError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigEditError(f"{key.strip()}: value {value!r} is not valid YAML: {' '.join(str(exc).split())}") \
            from exc
    return key.strip(), _yaml12_number(parsed)


def parse_assignments(texts: Iterable[str]) -> dict[str, Any]:
    """Several ``KEY=VALUE`` texts in order (a later one for the same key wins)."""
    return dict(parse_assignment(text) for text in texts)


def parse_model_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` -> (name, edits); values are YAML as in every ``KEY=VALUE``,
    and a comma inside brackets belongs to its value (``glnet_stl:depths=[1,1,2,1],num_slots=16``)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise ConfigEditError(f"empty model name in {text!r} (expected NAME or NAME:key=value,key=value)")
    parts, depth, current = [], 0, ""
    for char in rest:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    try:
        return name, parse_assignments(part.strip() for part in parts if part.strip())
    except ConfigEditError as exc:
        raise ConfigEditError(f"bad model options in {text!r} (expected NAME:key=value,key=value): {exc}") from exc


def _yaml12_number(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``2e-3`` as a string; YAML 1.2 and jsonargparse read the number."""
    if isinstance(value, str) and any(c.isdigit() for c in value):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _init_args(node: dict) -> dict:
    if not isinstance(node.get("init_args"), dict):
        node["init_args"] = {}
    return node["init_args"]


def set_dotted(config: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` in ``config`` in place; missing or null parents become mappings.

    A value replaces whatever was there (a mapping is not merged), as on the LightningCLI command
    line; setting a key through a non-mapping value is an error rather than a silent loss.
    """
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigEditError(f"{dotted!r} is not a dotted key (empty part)")
    node = config
    for depth, part in enumerate(parts[:-1]):
        if "class_path" in node and part not in ("class_path", "init_args"):
            node = _init_args(node)
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and _is_class_name(child):
            child = node[part] = {"class_path": child, "init_args": {}}
        elif not isinstance(child, dict):
            raise ConfigEditError(f"cannot set {dotted}: {'.'.join(parts[:depth + 1])} is {child!r}, not a mapping")
        node = child
    if "class_path" in node and parts[-1] not in ("class_path", "init_args"):
        node = _init_args(node)
    current = node.get(parts[-1])
    if isinstance(current, str) and _is_class_name(current) and isinstance(value, Mapping) and "class_path" not in value:
        current = node[parts[-1]] = {"class_path": current, "init_args": {}}
    if isinstance(current, dict) and "class_path" in current:
        if isinstance(value, str) and _is_class_name(value):
            current["class_path"] = value  # another class, the same explicitly given init_args
            return
        if isinstance(value, Mapping) and "class_path" not in value:
            _init_args(current).update(copy.deepcopy(dict(value)))  # settings of the class already chosen
            return
    node[parts[-1]] = copy.deepcopy(value)


def _is_class_name(text: str) -> bool:
    """A value LightningCLI reads as a class (``glnet_stl``, ``pkg.mod.Class``), not a path or free text."""
    return text.replace(".", "").replace("_", "").isalnum() and not text.endswith((".yaml", ".yml"))


def apply_edits(config: Mapping[str, Any], *edits: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with each mapping of dotted-key edits applied in order (later wins)."""
    result = copy.deepcopy(dict(config))
    for mapping in edits:
        for key, value in mapping.items():
            set_dotted(result, key, value)
    return result


def find_relative(name: str | Path, start: Path) -> Path:
    """A path written relative to the repository, looked up from ``start``'s folder upwards.

    Why: sweep files name their base as ``configs/...``, which must resolve whether the command
    runs from the repository, from elsewhere, or from a copy of the sweeps folder.
    """
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        return candidate
    for folder in (start.parent, *start.parent.parents):
        if (folder / candidate).is_file():
            return folder / candidate
    return candidate
