"""Checkpoints: resuming a run with a config whose architecture differs from its checkpoint is refused
with one line naming the mismatching keys (with shapes) and the settings the checkpoint was trained
with. (With an explicit ``--ckpt_path FILE`` LightningCLI rebuilds the model from the checkpoint's
own hyper-parameters, so there is no mismatch to report; ``last``/``best``/``hpc`` are resolved later
and are checked here.)

Loading a *published* reference checkpoint with the wrong model name (the error says which name
fits) is tested in tests/models/test_named_models.py::test_wrong_model_name_for_a_published_checkpoint_says_which_fits.
"""
from __future__ import annotations

import pytest

from glnet_lightning.cli.main import main
from glnet_lightning.lit import GLNetModule
from glnet_lightning.lit.checkpoint_check import checkpoint_mismatch
from glnet_lightning.models.glnet import glnet_stl
from testkit import one_error_line, tiny, tiny_args


@pytest.mark.slow
def test_resuming_another_architecture_names_the_keys(fashion_mnist, capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["fit", *tiny_args(run, train_batches=1, val_batches=1)]) == 0
    last = run / "checkpoints" / "last.ckpt"
    capsys.readouterr()

    # same run directory, another local branch, wider last stage: --ckpt_path last cannot fit
    rc = main(["fit", *tiny_args(run, epochs=2), "--model.backbone.local=window_mhsa",
               "--model.backbone.dims=[16, 32, 48, 96]", "--ckpt_path", "last"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert f"checkpoint {last} does not fit the configured model" in line
    assert "missing key(s): model.stages.0.blocks.0.mixer.local" in line and "unexpected key(s)" in line
    assert "model.head.weight [10, 64] in the checkpoint vs [10, 96]" in line
    assert "It was trained with model.backbone=glnet_stl:depths=[1, 1, 1, 1],dims=[16, 32, 48, 64]," in line

    # the same check, for a checkpoint file and a model built in Python
    same = GLNetModule.load_from_checkpoint(last)
    assert checkpoint_mismatch(last, same) is None
    other = GLNetModule(same.backbone.replace(num_slots=9, slot_init="param"), num_classes=10)
    assert "missing key(s): model.stages.0.blocks.0.mixer.global_branch.slot_init.slots" in \
        checkpoint_mismatch(last, other)


def test_the_message_names_keys_shapes_and_the_training_settings(fit_checkpoint):
    """In process, without the data set: the session's tiny fit checkpoint against a module of another width."""
    path = fit_checkpoint.path
    assert checkpoint_mismatch(path, GLNetModule(glnet_stl(**tiny()), num_classes=4)) is None
    wider = GLNetModule(glnet_stl(**tiny(dims=[16, 32, 48, 96])), num_classes=4)
    reason = checkpoint_mismatch(path, wider)
    assert reason.startswith(f"checkpoint {path} does not fit the configured model: ")
    assert "model.head.weight [4, 64] in the checkpoint vs [4, 96]" in reason and "\n" not in reason
    assert reason.endswith("It was trained with model.backbone=glnet_stl:depths=[1, 1, 1, 1],dims=[16, 32, 48, 64],stage_mixers=[glmix, glmix, glmix, glmix],head_dim=16,num_slots=4, "
                           "model.num_classes=4: use those settings.")
