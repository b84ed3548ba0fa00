"""Say, in one line, why a Lightning checkpoint does not fit the configured model.

Why: resuming or evaluating with a config that differs from the one a checkpoint was trained with
(other widths, slot count, strategy, classes) makes ``load_state_dict`` dump hundreds of lines of
key names. This names the first few mismatching keys of each kind, with shapes, and the settings
the checkpoint was trained with — usually the fix is to use those.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["checkpoint_mismatch"]

_SHOWN = 3


def _listing(keys: list[str], describe=str) -> str:
    shown = ", ".join(describe(k) for k in keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def checkpoint_mismatch(path: str | os.PathLike, model: nn.Module) -> str | None:
    """None when ``path``'s ``state_dict`` has exactly ``model``'s keys and shapes, else the reason."""
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    state = checkpoint.get("state_dict", checkpoint)
    given = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    reshaped = sorted(k for k in set(given) & set(expected) if given[k] != expected[k])
    if not (missing or unexpected or reshaped):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if reshaped:
        parts.append(f"{len(reshaped)} key(s) of another shape: "
                     + _listing(reshaped, lambda k: f"{k} {list(given[k])} in the checkpoint vs {list(expected[k])}"))
    hp = checkpoint.get("hyper_parameters") or {}
    trained = ""
    if "model_name" in hp:
        trained = (f" It was trained with model.model_name={hp['model_name']}, model.model_kwargs="
                   f"{hp.get('model_kwargs')}, model.num_classes={hp.get('num_classes')}: use those settings.")
    return f"checkpoint {path} does not fit the configured model: {'; '.join(parts)}.{trained}"
