"""TensorBoard images of the soft-clustering assignment, so a user sees slots form while training.

Every ``every_n_epochs`` validation epochs, a fixed validation batch (the first ``num_images``
images of the first batch, captured once; the validation loader is not shuffled) goes through
the model with ``record_assignment`` switched on for a few GLMix blocks. Each pixel gets the
colour of its arg-max slot, drawn over the input image. One grid is logged per epoch under
``slot_maps``: one row per image, columns = the input, then one overlay per selected block.
"""
from __future__ import annotations

import colorsys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import draw_segmentation_masks, make_grid

__all__ = ["SlotMapCallback", "slot_palette", "render_assignment", "global_branches", "record_assignments"]


def slot_palette(num_slots: int) -> list[tuple[int, int, int]]:
    """``num_slots`` well-separated RGB colours (hues spaced by the golden ratio)."""
    colours = []
    for i in range(num_slots):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Per-image min-max rescale of normalised float images to uint8 RGB (B, 3, H, W)."""
    x = images.detach().float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp(min=1e-6) * 255).round().to(torch.uint8)[:, :3]


def render_assignment(images_u8: torch.Tensor, assignment: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Overlay the arg-max slot of ``assignment`` (B, M, h, w) on ``images_u8`` (B, 3, H, W) -> uint8."""
    num_slots = assignment.shape[1]
    labels = assignment.float().argmax(dim=1, keepdim=True)  # (B, 1, h, w)
    labels = F.interpolate(labels.float(), size=images_u8.shape[-2:], mode="nearest").long()[:, 0]
    slot_ids = torch.arange(num_slots, device=labels.device).view(-1, 1, 1)
    palette = slot_palette(num_slots)
    return torch.stack([
        draw_segmentation_masks(img, labels[i] == slot_ids, alpha=alpha, colors=palette)
        for i, img in enumerate(images_u8)
    ])


def global_branches(model: torch.nn.Module) -> list:
    """The slot-attention branches of the model's GLMix blocks, in forward order (empty if none)."""
    blocks = model.glmix_blocks() if hasattr(model, "glmix_blocks") else []
    branches = [getattr(getattr(b, "mixer", None), "global_branch", None) for b in blocks]
    return [g for g in branches if g is not None and hasattr(g, "record_assignment")]


@torch.no_grad()
def record_assignments(model: torch.nn.Module, images: torch.Tensor, branches: Sequence) -> list[torch.Tensor]:
    """One eval-mode forward of ``images`` with ``record_assignment`` on for ``branches``; their
    soft-clustering maps (B, M, h, w). Recording, the kept maps and train/eval mode are restored, so
    the model is left as it was (the callback and the notebooks' analysis both read maps this way)."""
    was_training = model.training
    model.eval()
    for branch in branches:
        branch.record_assignment = True
    try:
        model(images)
        return [branch.assignment for branch in branches]
    finally:
        for branch in branches:
            branch.record_assignment = False
            branch.assignment = None
        model.train(was_training)


def _pick(count: int, wanted: Sequence[int] | None, max_blocks: int) -> list[int]:
    """0-based indices: the wanted 1-based block numbers that exist, else ``max_blocks`` spread evenly."""
    if wanted:
        return [b - 1 for b in wanted if 1 <= b <= count]
    if count <= max_blocks:
        return list(range(count))
    return sorted({round(i * (count - 1) / (max_blocks - 1)) for i in range(max_blocks)})


class SlotMapCallback(Callback):
    """Log arg-max slot assignment overlays for a fixed validation batch to TensorBoard.

    Args:
        every_n_epochs: log after validation epochs 0, N, 2N, ... (0 disables).
        num_images: images taken from the first validation batch.
        blocks: 1-based GLMix block numbers to show (the paper shows 2, 5 and 10); default: up to
            ``max_blocks`` spread over the network.
        source: "model" (raw weights) or "ema" (the averaged weights when the module has them).
        tile_size: small images are enlarged (nearest neighbour) to about this many pixels.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, blocks: Sequence[int] | None = None,
                 max_blocks: int = 4, source: str = "model", tile_size: int = 96) -> None:
        if every_n_epochs < 0 or num_images < 1 or max_blocks < 1 or source not in ("model", "ema"):
            raise ValueError("SlotMapCallback needs every_n_epochs >= 0, num_images >= 1, max_blocks >= 1 and "
                             f"source 'model' or 'ema'; got {every_n_epochs}, {num_images}, {max_blocks}, {source!r}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.blocks = list(blocks) if blocks else None
        self.max_blocks = max_blocks
        self.source = source
        self.tile_size = tile_size
        self._images: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self._images is None and batch_idx == 0 and dataloader_idx == 0:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._images = images[: self.num_images].detach().to("cpu", copy=True)

    def _due(self, trainer: Trainer) -> bool:
        return (self.every_n_epochs > 0 and not trainer.sanity_checking and trainer.is_global_zero
                and trainer.current_epoch % self.every_n_epochs == 0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._images is None or not self._due(trainer):
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:
            return
        model = pl_module.model
        if self.source == "ema" and getattr(pl_module, "ema_model", None) is not None:
            model = pl_module.ema_model
        grid = self.render(model, self._images.to(pl_module.device))
        if grid is not None:
            logger.experiment.add_image("slot_maps", grid, global_step=trainer.global_step)

    @torch.no_grad()
    def render(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor | None:
        """The uint8 (3, H, W) grid for ``images``, or None if the model has no slot branches."""
        branches = global_branches(model)
        chosen = [branches[i] for i in _pick(len(branches), self.blocks, self.max_blocks)]
        if not chosen:
            return None
        maps = record_assignments(model, images, chosen)
        base = to_uint8_images(images).cpu()
        if base.shape[-1] < self.tile_size:  # small inputs (e.g. 32x32) are unreadable at 1:1
            scale = max(1, self.tile_size // base.shape[-1])
            base = F.interpolate(base, scale_factor=scale, mode="nearest")
        columns = [base] + [render_assignment(base, a.cpu()) for a in maps]
        tiles = torch.stack(columns, dim=1).flatten(0, 1)  # image-major: row i = image i
        return make_grid(tiles, nrow=len(columns), padding=2, pad_value=255)
