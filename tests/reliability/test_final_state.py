"""``last.ckpt`` holds the final state whatever ended ``fit``, and can be refreshed on a step or time
cadence (``--checkpoint.last_every_n_steps`` / ``--checkpoint.last_every_minutes``) so a pre-empted
run loses minutes, not an epoch. Tiny Fashion-MNIST runs in process."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback

from glnet_lightning.cli.lightning_cli import ConfigError, build_cli
from testkit import tiny_args


class RecordSaves(Callback):
    """The global step of every checkpoint written (best and last alike)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.steps.append(trainer.global_step)


def _fit(run, *extra: str) -> list[int]:
    cli = build_cli([*tiny_args(run, train_batches=10, val_batches=1), "--trainer.max_steps", "7",
                     "--trainer.val_check_interval", "4", *extra])
    saves = RecordSaves()
    cli.trainer.callbacks.append(saves)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return saves.steps


def _last_step(run) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def test_max_steps_after_a_mid_epoch_validation_still_saves_the_final_state(fashion_mnist, tmp_path):
    # validation at step 4 saves best + last; training goes on to max_steps 7 inside the same epoch
    steps = _fit(tmp_path / "run")
    assert _last_step(tmp_path / "run") == 7
    assert 3 not in steps and 6 not in steps  # no step cadence unless asked for


def test_last_every_n_steps_refreshes_last_between_validations(fashion_mnist, tmp_path):
    steps = _fit(tmp_path / "run", "--checkpoint.last_every_n_steps", "3")
    assert {3, 6} <= set(steps) and steps[-1] == 7
    assert _last_step(tmp_path / "run") == 7
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == 4  # the best checkpoint keeps its per-validation cadence


def test_last_every_minutes_saves_when_the_interval_has_passed(fashion_mnist, tmp_path):
    # a tiny interval: every step is "late", so each one refreshes last.ckpt
    steps = _fit(tmp_path / "run", "--checkpoint.last_every_minutes", "1e-6")
    assert set(range(1, 8)) <= set(steps)


@pytest.mark.parametrize("option", ["--checkpoint.last_every_n_steps=0", "--checkpoint.last_every_minutes=-1"])
def test_bad_cadence_is_a_config_error(option, tmp_path):
    with pytest.raises(ConfigError, match=option.split("=")[0].lstrip("-")):
        build_cli([*tiny_args(tmp_path / "run"), option])


def test_runs_built_without_a_subcommand_save_on_sigterm_too(tmp_path):
    """Optuna trials build their fit with ``run=False``; a pre-empted trial must save like ``glnet fit``."""
    from glnet_lightning.lit.preemption import PreemptionCheckpoint

    cli = build_cli(tiny_args(tmp_path / "run"))
    assert sum(isinstance(cb, PreemptionCheckpoint) for cb in cli.trainer.callbacks) == 1
