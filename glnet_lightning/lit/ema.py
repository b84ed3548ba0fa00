"""Exponential moving average of the weights, kept beside (not inside) the LightningModule.

Why outside the module tree: the raw weights stay the LightningModule's ``state_dict`` (so a
checkpoint's ``state_dict`` is exactly the trained model), the optimizer and DDP never see the
copy, and it is created where it must be — after Lightning has moved the model to its device.
The averaging itself is timm's ``ModelEmaV3``; this class only adds lazy creation and the
checkpoint round trip (``state_dict`` / ``load_state_dict``), including a state loaded before the
copy exists (Lightning restores checkpoints before ``on_fit_start``). Lightning's ``EMAWeightAveraging``
validates and saves the average *instead of* the raw weights (docs/architecture.md says what it lacks).
"""
from __future__ import annotations

from typing import Any

from timm.utils import ModelEmaV3
from torch import nn

from glnet_lightning.models.weights import EMA_CHECKPOINT_KEY

__all__ = ["EMA_CHECKPOINT_KEY", "EmaWeights"]


class EmaWeights:
    """EMA of a model's parameters and buffers with ``decay`` (optionally timm's decay warm-up)."""

    def __init__(self, decay: float, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None (no EMA), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self._ema: ModelEmaV3 | None = None
        self._pending: dict[str, Any] | None = None

    @property
    def module(self) -> nn.Module | None:
        """The averaged copy (eval mode), or None before :meth:`attach`."""
        return None if self._ema is None else self._ema.module

    @property
    def has_state(self) -> bool:
        """True once there are averaged weights: attached, or loaded from a checkpoint."""
        return self._ema is not None or self._pending is not None

    def attach(self, model: nn.Module) -> nn.Module:
        """Create the copy from ``model`` (on its device) if needed, then apply any loaded state."""
        if self._ema is None:
            self._ema = ModelEmaV3(model, decay=self.decay, use_warmup=self.warmup)
            self._ema.requires_grad_(False)
        if self._pending is not None:
            self._ema.module.load_state_dict(self._pending)
            self._pending = None
        return self._ema.module

    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current weights in; ``step`` is the optimizer step (timm skips the very first)."""
        if self._ema is None:
            raise RuntimeError("EmaWeights.update() called before attach()")
        self._ema.update(model, step=step)

    def state_dict(self) -> dict[str, Any] | None:
        if self._ema is not None:
            return self._ema.module.state_dict()
        return self._pending

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._ema is not None:
            self._ema.module.load_state_dict(state)
        else:
            self._pending = state
