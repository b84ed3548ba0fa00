"""Weights to start a run from (``GLNetModule(init_weights=...)``): a published checkpoint or a ``fit`` checkpoint.

Why not timm's ``pretrained=True`` path: the module builds its backbone before it knows whether a
checkpoint will be restored over it, and the file must not be needed again (see
``GLNetModule.load_init_weights``). So the weights go into the existing model, after the same
name conversion timm's path applies (the model family's ``checkpoint_filter_fn``, which turns the
reference GLNet layout into ours), with timm's conventions for what may differ: the classifier
(re-initialised when the class count differs) and the input channels of the first conv (adapted).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from glnet_lightning.errors import UserError

from .checkpoint_io import read_checkpoint
from .ema import EMA_CHECKPOINT_KEY

__all__ = ["InitWeightsError", "INIT_WEIGHTS_KEYS", "read_init_weights", "load_init_weights"]

INIT_WEIGHTS_KEYS = ("auto", "ema", "raw")

# Where checkpoints keep averaged and raw weights: ours (GLNetModule) and timm's train script / DeiT-style files.
_EMA_KEYS = ("ema_state_dict", "model_ema", "state_dict_ema")
_RAW_KEYS = ("model", "state_dict")


class InitWeightsError(UserError, ValueError):
    """An ``init_weights`` file that is missing, unreadable, or does not fit the model."""


def _lightning_weights(checkpoint: Mapping[str, Any], key: str, path: Path) -> tuple[dict[str, Any], str]:
    ema = checkpoint.get(EMA_CHECKPOINT_KEY)
    if key == "ema" and ema is None:
        raise InitWeightsError(f"init_weights {path} has no EMA weights (its run trained without ema_decay); "
                               "use init_weights_key='raw'")
    if key != "raw" and ema is not None:
        return dict(ema), f"the EMA weights of {path.name}"
    raw = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    return raw, f"the raw weights of {path.name}"


def read_init_weights(path: str | Path, key: str = "auto") -> tuple[dict[str, Any], str]:
    """The backbone state dict in ``path`` and a description of which weights these are.

    ``key``: 'ema' or 'raw' weights of a checkpoint that has both (a ``fit`` checkpoint with EMA, a
    timm training checkpoint); 'auto' prefers the averaged ones. A plain state dict is taken as is.
    """
    if key not in INIT_WEIGHTS_KEYS:
        raise InitWeightsError(f"init_weights_key={key!r}: choose one of {list(INIT_WEIGHTS_KEYS)}")
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path, InitWeightsError, "init_weights file")
    if "state_dict" in checkpoint and "hyper_parameters" in checkpoint:
        return _lightning_weights(checkpoint, key, path)
    order = {"auto": _EMA_KEYS + _RAW_KEYS, "ema": _EMA_KEYS, "raw": _RAW_KEYS}[key]
    found = next((k for k in order if isinstance(checkpoint.get(k), Mapping)), None)
    if found is None and key == "ema":
        raise InitWeightsError(f"init_weights {path} has no EMA weights (none of {list(_EMA_KEYS)})")
    if found is None and any(isinstance(checkpoint.get(k), Mapping) for k in _EMA_KEYS):
        raise InitWeightsError(f"init_weights {path} has only EMA weights; use init_weights_key='ema' or 'auto'")
    weights = checkpoint[found] if found is not None else checkpoint
    what = f"{path.name}" + (f" ({found})" if found is not None else "")
    return {k.removeprefix("module."): v for k, v in weights.items()}, what


def _filter_fn(model: nn.Module):
    """The name conversion timm's pretrained path applies for this model's family, if it has one."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def load_init_weights(model: nn.Module, path: str | Path, key: str = "auto") -> str:
    """Load ``path`` into ``model`` (see :func:`read_init_weights`); returns a line saying what was loaded.

    A classifier of another shape (another ``num_classes``) keeps the model's fresh initialisation;
    anything else that does not fit raises :class:`InitWeightsError` naming the keys.
    """
    state, what = read_init_weights(path, key)
    filter_fn = _filter_fn(model)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except (ValueError, KeyError) as exc:
            raise InitWeightsError(f"init_weights {path} does not fit {type(model).__name__}: {exc}") from exc
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_conv = cfg.get("first_conv")
    weight_key = f"{first_conv}.weight" if first_conv else None
    if weight_key in state and weight_key in own and state[weight_key].shape[1] != own[weight_key].shape[1]:
        from timm.models import adapt_input_conv

        state[weight_key] = adapt_input_conv(own[weight_key].shape[1], state[weight_key])
    classifier = cfg.get("classifier", "head")
    head = [k for k in own if k == classifier or k.startswith(f"{classifier}.")]
    note = ""
    if any(k not in state or state[k].shape != own[k].shape for k in head):
        given = state.get(f"{classifier}.weight")
        note = (f"; {classifier} re-initialised: the file has " +
                (f"{given.shape[0]} classes, the model {own[head[0]].shape[0]}" if given is not None and head
                 else "no classifier of this shape"))
        state = {k: v for k, v in state.items() if k not in head and not k.startswith(f"{classifier}.")}
    # Checked before loading: a refused file leaves the model as it was.
    missing = sorted(set(own) - set(state) - set(head))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        details = "; ".join(f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("wrong shape", wrong_shape)) if keys)
        raise InitWeightsError(f"init_weights {path} does not fit {type(model).__name__} ({details})")
    model.load_state_dict(state, strict=not note)
    return f"init_weights: loaded {what}{note}"
