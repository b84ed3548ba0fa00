"""Keep timm's RandAugment / AutoAugment posterize working with Pillow >= 13.

Why: with the recipe string ``rand-m9-mstd0.5-inc1`` the sampled magnitude is
clipped at 10, where timm's ``PosterizeIncreasing`` asks to keep 0 bits (and
the AutoAugment policies do the same for small levels). Older Pillow returned
a black image for 0 bits; Pillow 13 raises ``ValueError`` instead, which kills
a DataLoader worker a few hundred images into an ImageNet epoch. We restore
the old result on the transform instances we build; nothing global is patched.
"""
from __future__ import annotations

from typing import Any

from PIL import Image
from timm.data import auto_augment

__all__ = ["augment_ops", "posterize_zero_bits_ok", "patch_posterize"]


def posterize_zero_bits_ok(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, except that keeping 0 bits gives a black image (the pre-Pillow-13 result)."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def augment_ops(transform: Any) -> list[Any]:
    """All timm ``AugmentOp`` objects reachable from a (possibly composed) transform."""
    found = []
    stack = [transform]
    while stack:
        item = stack.pop()
        if isinstance(item, auto_augment.AugmentOp):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            for attr in ("transforms", "ops", "policy"):
                stack.extend(getattr(item, attr, None) or [])
    return found


def patch_posterize(transform: Any) -> int:
    """Swap in :func:`posterize_zero_bits_ok` for every posterize op of ``transform``; return how many."""
    ops = [op for op in augment_ops(transform) if op.aug_fn is auto_augment.posterize]
    for op in ops:
        op.aug_fn = posterize_zero_bits_ok
    return len(ops)
