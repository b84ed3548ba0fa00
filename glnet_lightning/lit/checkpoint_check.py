"""Say, in one line, why a Lightning checkpoint does not fit the configured model.

Why: resuming or evaluating with a config that differs from the one a checkpoint was trained with
(other widths, slot count, strategy, classes) makes ``load_state_dict`` dump hundreds of lines of
key names. The message is the one every weights file gets (``models/weights.mismatch``): the first
few mismatching keys of each kind, with shapes, and the settings the checkpoint was trained with —
usually the fix is to use those.
"""
from __future__ import annotations

import os

from torch import nn

from glnet_lightning.models.weights import mismatch, read_checkpoint

__all__ = ["checkpoint_mismatch"]


def checkpoint_mismatch(path: str | os.PathLike, model: nn.Module) -> str | None:
    """None when ``path``'s ``state_dict`` has exactly ``model``'s keys and shapes, else the reason.

    Exactly: resuming restores the whole module, so the classifier and input conv must fit too.
    """
    checkpoint = read_checkpoint(path)
    reason = mismatch(checkpoint.get("state_dict", checkpoint), model, strict=True,
                      hyper_parameters=checkpoint.get("hyper_parameters"))
    return None if reason is None else f"checkpoint {path} does not fit the configured model: {reason}"
