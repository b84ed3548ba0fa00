"""Numerics: a NaN training loss is never trained on. ``skip`` leaves weights, optimizer moments, norm
statistics and EMA exactly as they were and training goes on; ``stop`` (the default) ends the run
with one line naming the global step and the last checkpoint."""
from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Callback

from glnet_lightning.cli.main import main
from glnet_lightning.lit import GLNetModule
from glnet_lightning.models.glnet import glnet_stl
from testkit import one_error_line, same, tiny, tiny_args
from testkit.data import RandomImages, make_trainer
from testkit.probes import PoisonBatch

POISONED_STEP = 3


class Snapshots(Callback):
    """Full training state at the start of every batch, by global step (EMA included)."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.by_step[trainer.global_step] = copy.deepcopy({
            "weights": pl_module.model.state_dict(), "ema": pl_module.ema.state_dict(),
            "optimizer": trainer.optimizers[0].state_dict()["state"]})


def test_skip_leaves_every_state_untouched_and_training_goes_on(tmp_path):
    tiny_kwargs = tiny()
    module = GLNetModule(glnet_stl(**tiny_kwargs), num_classes=10, drop_path_rate=0.0, mixup=0.0, cutmix=0.0,
                         ema_decay=0.9, slot_map_every_n_epochs=0, warmup_epochs=0, nonfinite_loss="skip")
    snapshots = Snapshots()
    trainer = make_trainer(tmp_path, max_steps=6, gradient_clip_val=5.0,
                           callbacks=[PoisonBatch(POISONED_STEP), snapshots])
    with pytest.warns(UserWarning, match=f"non-finite training loss at global step {POISONED_STEP}: step skipped"):
        trainer.fit(module, datamodule=RandomImages())

    before, after = snapshots.by_step[POISONED_STEP], snapshots.by_step[POISONED_STEP + 1]
    # the skipped batch changed nothing: weights, BatchNorm statistics, AdamW moments and steps, EMA
    assert same(before, after)
    assert any(k.endswith("running_mean") for k in before["weights"])
    assert module.nonfinite_guard.skipped_steps == 1
    # ...while the steps around it trained normally, and nothing became NaN
    assert not same(snapshots.by_step[POISONED_STEP - 1]["weights"], before["weights"])
    assert not same(after["weights"], snapshots.by_step[POISONED_STEP + 2]["weights"])
    assert all(torch.isfinite(v).all() for v in module.model.state_dict().values() if v.is_floating_point())
    assert trainer.global_step == 6


def test_stop_names_the_step_and_the_last_checkpoint(fashion_mnist, capsys, tmp_path):
    # epoch 0 (4 steps) ends with last.ckpt; the batch at global step 6 is poisoned
    rc = main(["fit", *tiny_args(tmp_path, train_batches=4, val_batches=1, epochs=2),
               '--trainer.callbacks+={"class_path": "testkit.probes.PoisonBatch", "init_args": {"at_step": 6}}'])
    line = one_error_line(capsys.readouterr().err)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert rc == 2
    assert "non-finite training loss (nan) at global step 6 (epoch 1, batch 2)" in line, line
    assert f"Last checkpoint: {last}" in line and "nonfinite_loss=skip" in line
    saved = torch.load(last, weights_only=False, map_location="cpu")
    assert saved["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
