"""Learning-rate recipe of docs/design.md, section 2: linear scaling with the global batch, then a
per-step linear warm-up followed by a cosine decay to a floor, and optionally a cool-down held at
the floor (the token-labeling recipe's 10 of 310 epochs).

Why a callable class for ``LambdaLR``: ``LambdaLR.state_dict`` stores the ``__dict__`` of callable
objects (but not of plain functions), so warm-up and total steps travel inside the checkpoint and
a resumed run continues on exactly the same curve.
"""
from __future__ import annotations

import math

__all__ = ["WarmupCosine", "scale_lr"]


def scale_lr(lr: float, global_batch_size: int, base_batch_size: int) -> float:
    """The linear scaling rule: ``lr`` is quoted for ``base_batch_size`` images per optimizer step."""
    if global_batch_size < 1 or base_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got global={global_batch_size}, base={base_batch_size}")
    return lr * global_batch_size / base_batch_size


class WarmupCosine:
    """``lr(step)`` rises linearly from ``warmup_lr`` to ``base_lr`` over ``warmup_steps``, then follows a
    half cosine down to ``min_lr`` at ``total_steps - cooldown_steps`` and stays there (the last
    ``cooldown_steps`` are the cool-down). Calling it gives the factor ``lr(step) / base_lr`` that
    ``torch.optim.lr_scheduler.LambdaLR`` expects."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
                 warmup_lr: float = 0.0, cooldown_steps: int = 0) -> None:
        if base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr}")
        if total_steps < 1 or warmup_steps < 0 or cooldown_steps < 0 or warmup_steps + cooldown_steps > total_steps:
            raise ValueError(f"need total_steps >= 1, 0 <= warmup_steps and 0 <= cooldown_steps with "
                             f"warmup_steps + cooldown_steps <= total_steps, got warmup_steps={warmup_steps}, "
                             f"cooldown_steps={cooldown_steps}, total_steps={total_steps}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.warmup_lr = float(warmup_lr)
        self.cooldown_steps = int(cooldown_steps)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.cooldown_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.lr_at(step) / self.base_lr

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_lr={self.base_lr:g}, total_steps={self.total_steps}, "
                f"warmup_steps={self.warmup_steps}, min_lr={self.min_lr:g}, warmup_lr={self.warmup_lr:g}"
                + (f", cooldown_steps={self.cooldown_steps})" if self.cooldown_steps else ")"))
