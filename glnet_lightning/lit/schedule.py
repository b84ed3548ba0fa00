"""Learning-rate recipes: linear scaling with the global batch (:func:`global_batch_size`, :func:`scale_lr`)
and the per-step schedules of the three task modules: classification's warm-up + cosine to a floor with an
optional cool-down (docs/design.md, section 2; the token-labeling recipe's 10 of 310 epochs), segmentation's
mmcv-style warm-up x cosine / poly (:class:`WarmupDecay`) and detection's warm-up + steps
(:class:`WarmupMultiStep`, section 7).

Why a callable class for ``LambdaLR``: ``LambdaLR.state_dict`` stores the ``__dict__`` of callable
objects (but not of plain functions), so warm-up and total steps travel inside the checkpoint and
a resumed run continues on exactly the same curve.
"""
from __future__ import annotations

import math

from typing import Any

__all__ = ["WarmupCosine", "WarmupDecay", "WarmupMultiStep", "global_batch_size", "planned_steps", "scale_lr"]


def global_batch_size(trainer: Any) -> int:
    """Images per optimizer step over all devices: the per-device batch (the data module's ``batch_size``, else
    the training loader's) x world size x gradient accumulation."""
    data = trainer.datamodule
    batch = getattr(data, "batch_size", None) if data is not None else None
    if batch is None:
        batch = getattr(trainer.train_dataloader, "batch_size", None)
    if batch is None:
        raise ValueError("cannot find the per-device batch size for lr scaling: give the data module a "
                         "`batch_size` attribute")
    return int(batch) * trainer.world_size * trainer.accumulate_grad_batches


def planned_steps(trainer: Any) -> tuple[int, int]:
    """``(total, per_epoch)`` optimizer steps of the run the Trainer is set up for (``per_epoch`` rounded up;
    estimated from ``max_epochs`` for a loader without a length)."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError("the lr schedule needs a finite length: set trainer.max_epochs or trainer.max_steps")
    total = max(1, int(total))
    per_epoch = trainer.num_training_batches / trainer.accumulate_grad_batches
    if not math.isfinite(per_epoch):
        per_epoch = total / max(1, trainer.max_epochs or 1)
    return total, max(1, math.ceil(per_epoch))


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


class WarmupMultiStep:
    """The detection recipes' step schedule (mmdet's ``step`` policy with ``linear`` warm-up): the factor of
    ``base_lr`` is ``gamma`` to the number of ``milestones`` (optimizer steps) passed, and over the first
    ``warmup_steps`` it is also scaled from ``warmup_ratio`` up to 1. A callable for ``LambdaLR``, so it
    travels in checkpoints like :class:`WarmupCosine`."""

    def __init__(self, milestones: list[int], gamma: float = 0.1, warmup_steps: int = 0,
                 warmup_ratio: float = 0.001) -> None:
        if warmup_steps < 0 or not 0 < warmup_ratio <= 1 or gamma <= 0 or any(m < 0 for m in milestones):
            raise ValueError(f"need warmup_steps >= 0, 0 < warmup_ratio <= 1, gamma > 0, milestones >= 0; got "
                             f"warmup_steps={warmup_steps}, warmup_ratio={warmup_ratio}, gamma={gamma}, "
                             f"milestones={milestones}")
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step: int) -> float:
        factor = self.gamma ** sum(step >= m for m in self.milestones)
        if step < self.warmup_steps:
            factor *= self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        return factor

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(milestones={self.milestones}, gamma={self.gamma:g}, "
                f"warmup_steps={self.warmup_steps}, warmup_ratio={self.warmup_ratio:g})")


#: The decays of :class:`WarmupDecay`.
DECAYS = ("cosine", "poly")


class WarmupDecay:
    """mmcv's iteration schedule as a ``LambdaLR`` factor: a ``cosine`` (to ``min_ratio``) or ``poly`` (power
    ``power``, to ``min_ratio``) decay over ``total_steps`` counted from step 0, multiplied during the first
    ``warmup_steps`` by a factor rising linearly from ``warmup_ratio`` to 1.

    A callable object, so ``LambdaLR`` saves its settings in checkpoints (as ``schedule.WarmupCosine``).
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.1, decay: str = "cosine",
                 power: float = 1.0, min_ratio: float = 0.0) -> None:
        if decay not in DECAYS:
            raise ValueError(f"schedule must be one of {list(DECAYS)}, got {decay!r}")
        if total_steps < 1 or warmup_steps < 0 or not 0 <= warmup_ratio <= 1 or power <= 0 or not 0 <= min_ratio <= 1:
            raise ValueError(f"need total_steps >= 1, warmup_steps >= 0, warmup_ratio and min_ratio in [0, 1], "
                             f"power > 0; got {total_steps}, {warmup_steps}, {warmup_ratio}, {min_ratio}, {power}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.decay = decay
        self.power = float(power)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        if self.decay == "cosine":
            factor = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            factor = self.min_ratio + (1 - self.min_ratio) * (1 - progress) ** self.power
        if step < self.warmup_steps:
            factor *= 1 - (1 - step / self.warmup_steps) * (1 - self.warmup_ratio)
        return factor

    def __repr__(self) -> str:
        return (f"WarmupDecay({self.decay}, total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
                f"warmup_ratio={self.warmup_ratio:g}" + (f", power={self.power:g}" if self.decay == "poly" else "")
                + f", min_ratio={self.min_ratio:g})")
