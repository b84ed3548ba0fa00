"""Everything one slot figure needs, computed once for the notebook and for ``glnet viz`` alike."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from glnet_lightning.lit.slot_maps import global_branches

from .assignments import BlockChoice, representative_slots, select_blocks, slot_assignments
from .checkpoints import LoadedModel
from .images import NamedImage, to_batch
from .kmedoids import KMedoids

__all__ = ["BlockView", "ImageSlots", "compute_slot_views"]


@dataclass(frozen=True)
class BlockView:
    choice: BlockChoice
    assignment: torch.Tensor  # (M, h, w), soft assignment over slots, sums to 1 over M
    representatives: KMedoids  # the k-medoid slots of this image in this block


@dataclass(frozen=True)
class ImageSlots:
    name: str
    view: np.ndarray  # uint8 (S, S, 3): the crop the model saw
    blocks: list[BlockView]
    model_label: str


def compute_slot_views(loaded: LoadedModel, images: Sequence[NamedImage], blocks: Sequence[int],
                       num_representatives: int = 4, size: int | None = None) -> tuple[list[ImageSlots], list[str]]:
    """Assignments and representative slots of every image in every requested block.

    Returns the per-image results and the notes on blocks the model lacks (see ``select_blocks``).
    ``size`` overrides the input resolution (larger inputs give finer maps).
    """
    choices = select_blocks(list(blocks), len(global_branches(loaded.model)))
    preprocess = replace(loaded.preprocess, size=size) if size else loaded.preprocess
    batch, views = to_batch(images, preprocess)
    maps = slot_assignments(loaded.model, batch, [c.block for c in choices])
    results = []
    for i, image in enumerate(images):
        per_block = [BlockView(c, m[i], representative_slots(m[i], num_representatives)) for c, m in zip(choices, maps)]
        results.append(ImageSlots(image.name, views[i], per_block, loaded.label))
    return results, [c.note for c in choices if c.note]
