"""Soft-clustering assignments of chosen GLMix blocks, read from the model's own forward pass.

Why through ``SlotAttentionBranch.record_assignment``: the maps come from the same logits the
forward pass dispatches with, so there is no second implementation of the clustering that could
drift from the model. Block numbers follow the paper's figures: GLMix blocks counted from 1 across
all stages.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from glnet_lightning.errors import UserError
from glnet_lightning.lit.slot_maps import global_branches, record_assignments

from .kmedoids import KMedoids, kmedoids, pairwise_distances

__all__ = ["BlockChoice", "BlockError", "check_block_numbers", "select_blocks", "slot_assignments",
           "representative_slots", "DEFAULT_BLOCKS"]

#: The blocks of the paper's figures: lower (colour), middle (objects), upper (discriminative parts).
DEFAULT_BLOCKS = (2, 5, 10)
_LEVELS = ("lower", "middle", "upper")


class BlockError(UserError, ValueError):
    """A block number that cannot be shown (not a positive integer, or a model without GLMix blocks)."""


@dataclass(frozen=True)
class BlockChoice:
    """``requested``: the 1-based block asked for; ``block``: the 1-based block shown; ``note``: why
    they differ (empty when they do not)."""

    requested: int
    block: int
    note: str = ""


def check_block_numbers(requested: Sequence[int]) -> None:
    """Raise :class:`BlockError` unless ``requested`` is a non-empty list of whole numbers >= 1."""
    bad = [b for b in requested if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or b < 1]
    if bad or not requested:
        raise BlockError(f"block numbers are GLMix blocks counted from 1; got {list(requested)}")


def select_blocks(requested: Sequence[int], count: int) -> list[BlockChoice]:
    """Map the requested 1-based GLMix block numbers onto a model with ``count`` GLMix blocks.

    A number the model lacks is replaced by the block at the same relative position among the
    requested ones: with the default (2, 5, 10) on a 4-block model, 10 becomes the upper block 4 and
    5 the middle block 3, so a small model still shows lower / middle / upper blocks. A block is
    shown once: a replacement that lands on a block already shown only adds its note to it.
    """
    check_block_numbers(requested)
    if count < 1:
        raise BlockError("the model has no GLMix block with a slot-attention branch: nothing to visualise")
    ranks = {b: r for r, b in enumerate(sorted(set(requested)))}
    chosen: dict[int, BlockChoice] = {}  # shown block -> choice, in order of first request
    for b in requested:
        note, mapped = "", int(b)
        if b > count:
            position = ranks[b] / (len(ranks) - 1) if len(ranks) > 1 else 1.0
            mapped = 1 + round(position * (count - 1))
            level = _LEVELS[min(2, round(position * 2))]
            note = f"block {b} -> {mapped} ({level} of the model's {count} GLMix blocks)"
        if mapped in chosen:
            before = chosen[mapped]
            note = "; ".join(filter(None, [before.note, note and f"{note}, shown once"]))
            chosen[mapped] = replace(before, note=note)
        else:
            chosen[mapped] = BlockChoice(int(b), mapped, note)
    return list(chosen.values())


def slot_assignments(model: nn.Module, images: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
    """Per-pixel soft assignment over slots, float32 (B, M, h, w) summing to 1 over M, for each
    1-based GLMix block in ``blocks`` (validate them with :func:`select_blocks` first)."""
    branches = global_branches(model)
    chosen = [branches[b - 1] for b in blocks]
    return [a.float().cpu() for a in record_assignments(model, images, chosen)]


def representative_slots(assignment: torch.Tensor, k: int = 4) -> KMedoids:
    """The ``k`` medoid slots of one image's assignment (M, h, w): k-medoids over the slots' maps
    (each flattened to h*w values), Euclidean distance. Medoids are ordered by cluster size."""
    maps = assignment.reshape(assignment.shape[0], -1).double().numpy()
    return kmedoids(pairwise_distances(maps), k)
