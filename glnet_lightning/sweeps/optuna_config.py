"""Dotted-key edits of a LightningCLI config dict, for the Optuna runner.

Why here and not on the command line: each trial writes the exact config it trained with into its
run dir (reproducible with ``glnet fit --config``), so the edits are applied to the YAML mapping.
``data.batch_size`` is accepted for a subclass-mode ``data: {class_path, init_args}`` block and lands
in ``data.init_args.batch_size``, the same place LightningCLI's own shorthand puts it.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["ConfigEditError", "parse_set", "set_dotted", "apply_edits", "load_yaml"]


class ConfigEditError(ValueError):
    """An edit that cannot be applied (bad ``KEY=VALUE`` or a key through a non-mapping)."""


def parse_set(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML value (``4``, ``[1,1,1,1]``, ``null``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigEditError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigEditError(f"--set {key}: {value!r} is not valid YAML ({exc})") from exc


def _init_args(node: dict) -> dict:
    if not isinstance(node.get("init_args"), dict):
        node["init_args"] = {}
    return node["init_args"]


def set_dotted(config: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` in ``config`` in place; missing or null parents become mappings."""
    parts = dotted.split(".")
    node = config
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, dict) and "class_path" in node and part not in ("class_path", "init_args"):
            node = _init_args(node)
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigEditError(f"cannot set {dotted}: {'.'.join(parts[:depth + 1])} is {child!r}, not a mapping")
        node = child
    leaf = parts[-1]
    if "class_path" in node and leaf not in ("class_path", "init_args"):
        node = _init_args(node)
    node[leaf] = copy.deepcopy(value)


def apply_edits(config: Mapping[str, Any], *edits: Mapping[str, Any]) -> dict:
    """A deep copy of ``config`` with each mapping of edits applied in order (later wins)."""
    result = copy.deepcopy(dict(config))
    for mapping in edits:
        for key, value in mapping.items():
            set_dotted(result, key, value)
    return result


def load_yaml(path: str | Path) -> dict:
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ConfigEditError(f"{path}: expected a YAML mapping")
    return data
