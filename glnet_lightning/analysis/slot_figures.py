"""The paper's slot figures as matplotlib Figures (no pyplot state: safe in notebooks and scripts).

Per image: one row per block with the input, the pseudo-coloured arg-max slot of every pixel
(colours from the training-time TensorBoard images, ``lit.slot_maps.slot_palette``), and the
representative slots' soft maps as heat maps. The comparison figure puts an early and a late
checkpoint's arg-max maps above each other.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from glnet_lightning.lit.slot_maps import render_assignment, slot_palette

from .slot_views import BlockView, ImageSlots

__all__ = ["pseudo_colour", "slot_heat_map", "slot_figure", "comparison_figure", "save_figure"]

_TILE = 2.2  # inches per panel


def pseudo_colour(view: np.ndarray, assignment: torch.Tensor) -> np.ndarray:
    """uint8 (S, S, 3): every pixel painted with its arg-max slot's colour (nearest upsampling)."""
    image = torch.from_numpy(view).permute(2, 0, 1)[None]
    return render_assignment(image, assignment[None], alpha=1.0)[0].permute(1, 2, 0).numpy()


def slot_heat_map(assignment: torch.Tensor, slot: int, size: int) -> np.ndarray:
    """float (S, S) in [0, 1]: one slot's soft assignment, bilinearly upsampled to the input size."""
    heat = F.interpolate(assignment[slot][None, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return heat[0, 0].clamp(0, 1).numpy()


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _block_title(block: BlockView) -> str:
    choice = block.choice
    return f"block {choice.block}" + (f" (asked {choice.requested})" if choice.requested != choice.block else "")


def slot_figure(result: ImageSlots) -> Figure:
    """Rows = blocks; columns = input, slot assignment, the k representative slots' heat maps."""
    k = max(len(b.representatives.medoids) for b in result.blocks)
    rows, cols = len(result.blocks), 2 + k
    fig = Figure(figsize=(_TILE * cols, _TILE * rows + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    size = result.view.shape[0]
    for r, block in enumerate(result.blocks):
        palette = slot_palette(block.assignment.shape[0])
        axes[r, 0].imshow(result.view)
        axes[r, 0].set_ylabel(_block_title(block))
        axes[r, 1].imshow(pseudo_colour(result.view, block.assignment), interpolation="nearest")
        if r == 0:
            axes[r, 0].set_title("input")
            axes[r, 1].set_title("slot assignment")
        labels = block.representatives.labels
        for j, slot in enumerate(block.representatives.medoids):
            ax = axes[r, 2 + j]
            ax.imshow(result.view, alpha=0.35)
            heat = slot_heat_map(block.assignment, slot, size)
            # scaled to the slot's own range (printed): with many slots the weights are small and close,
            # what matters is where they are high
            lo, hi = float(heat.min()), float(heat.max())
            ax.imshow(heat, cmap="inferno", vmin=lo, vmax=max(hi, lo + 1e-6), alpha=0.8)
            ax.set_title(f"slot {slot} (cluster of {int((labels == j).sum())})\nweights {lo:.2f}-{hi:.2f}",
                         color=np.array(palette[slot]) / 255, fontsize="small")
        for ax in axes[r]:
            _off(ax)
        for ax in axes[r, 2 + len(block.representatives.medoids):]:
            ax.set_visible(False)
    fig.suptitle(f"{result.name}: {result.model_label}")
    return fig


def comparison_figure(results: Sequence[ImageSlots]) -> Figure:
    """One image under several checkpoints (e.g. early, late): rows = checkpoints, columns = input and
    the slot assignment of each block."""
    blocks = len(results[0].blocks)
    fig = Figure(figsize=(_TILE * (1 + blocks), _TILE * len(results) + 0.5), layout="constrained")
    axes = fig.subplots(len(results), 1 + blocks, squeeze=False)
    for r, result in enumerate(results):
        axes[r, 0].imshow(result.view)
        axes[r, 0].set_ylabel(result.model_label, fontsize="small")
        for c, block in enumerate(result.blocks, start=1):
            axes[r, c].imshow(pseudo_colour(result.view, block.assignment), interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(_block_title(block))
        for ax in axes[r]:
            _off(ax)
    fig.suptitle(f"{results[0].name}: slot assignment over training")
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
