"""Slot assignment images: rendering, and the callback writing them to TensorBoard."""
from __future__ import annotations

import timm
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glnet_lightning.lit import GLNetModule, SlotMapCallback
from glnet_lightning.models.glnet import glnet_stl
from glnet_lightning.lit.slot_maps import global_branches, render_assignment, slot_palette
from testkit import tiny
from testkit.data import RandomImages, make_trainer


def test_palette_distinct_and_overlay_colours_pixels():
    palette = slot_palette(16)
    assert len(set(palette)) == 16
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assignment = torch.zeros(2, 4, 2, 2)
    assignment[:, 1] = 1.0  # every pixel belongs to slot 1
    out = render_assignment(images, assignment, alpha=1.0)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out[0, :, 0, 0], torch.tensor(palette[:4][1], dtype=torch.uint8))


def test_render_restores_model_state():
    tiny_kwargs = tiny()
    model = timm.create_model("glnet_stl", num_classes=10, **tiny_kwargs).train()
    callback = SlotMapCallback(num_images=3, tile_size=64)
    grid = callback.render(model, torch.randn(3, 3, 32, 32))
    # 3 rows (images) x 5 columns (input + 4 GLMix blocks) of 64x64 tiles with 2-pixel padding
    assert grid.shape == (3, 3 * 66 + 2, 5 * 66 + 2) and grid.dtype == torch.uint8
    assert model.training
    assert all(not b.record_assignment and b.assignment is None for b in global_branches(model))
    callback.blocks = [2, 99]  # 1-based; blocks that do not exist are ignored
    assert callback.render(model, torch.randn(1, 3, 32, 32)).shape[-1] == 2 * 66 + 2


def test_callback_logs_grid_to_tensorboard(tmp_path):
    tiny_kwargs = tiny()
    data = RandomImages()
    module = GLNetModule(glnet_stl(**tiny_kwargs), num_classes=10, mixup=0, cutmix=0, ema_decay=None,
                         slot_map_every_n_epochs=1)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = make_trainer(tmp_path, logger=logger, max_epochs=2, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert any(isinstance(cb, SlotMapCallback) for cb in trainer.callbacks)  # brought by configure_callbacks
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("slot_maps")
    assert [im.step for im in images] == [1, 2]  # after each epoch's validation (not the sanity check)
