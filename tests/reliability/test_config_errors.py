"""Config: every bad setting fails before any data is read, with one ``glnet: error:`` line that says
what to fix, and exit code 2: the network's description, the image size, typed options. (The other
Trainer/module/data options and missing data roots: tests/cli/test_cli_errors.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from glnet_lightning.cli.main import main
from testkit import one_error_line

FMNIST = str(Path(__file__).resolve().parents[2] / "configs" / "fashion_mnist.yaml")

# The data set (the system copy) is never read: reading it would end in a different error, on val_size.
NO_DATA = ["--data.init_args.val_size=60000"]


@pytest.mark.parametrize("override, expected", [
    # names: the valid choices are listed
    ("--model.backbone=glnet_nope", ["glnet_stl", "glnet_stl_paramslot", "glnet_4g", "glnet_9g", "glnet_16g"]),
    ("--model.backbone.local=conv_magic", ["choose one of ['dwconv', 'window_mhsa', 'none']"]),
    ("--model.backbone.clustering=fuzzy", ["unknown clustering strategy 'fuzzy'", "'soft'", "'kmeans'"]),
    ("--model.backbone.slot_init=banana", ["unknown slot_init strategy 'banana'", "'param'", "'pool'"]),
    # geometry
    ("--model.backbone.num_slots=8", ["num_slots=8", "not a perfect square"]),
    ("--model.backbone.kernel_size=6", ["kernel_size=6 is invalid", "odd"]),
    ("--model.backbone.dims=[48, 64, 96, 128]", ["width 48 is not a multiple of head_dim=32"]),
    ("--data.init_args.image_size=100", ["data.image_size=100 is not divisible by the model's total stride 32",
                                         "96 or 128"]),
    # wrong types, in the network's description as well as in the recipe's options: the parser names the key
    ("--model.backbone.depths=two", ["model.backbone.depths: Expected a <class 'list'>. Got value: two"]),
    ("--model.backbone.dims=[32, 64.5, 96, 128]", ["model.backbone.dims: Expected a <class 'int'>. Got value: 64.5"]),
    ("--model.backbone.num_slots=many", ["model.backbone.num_slots: Expected a <class 'int'>", "(given: many)"]),
    ("--model.backbone.num_slotz=9", ["model.backbone.num_slotz: glnet_stl has no such setting; did you mean num_slots?"]),
    ("--model.warmup_epochs=soon", ["model.warmup_epochs: Expected a <class 'float'>. Got value: soon"]),
    ("--data.init_args.image_size=big", ["image_size", "big"]),
    ("--model.nonfinite_loss=ignore", ["nonfinite_loss must be one of ('stop', 'skip')"]),
])
def test_bad_setting_is_one_line_before_any_data(override, expected, capsys, tmp_path):
    rc = main(["fit", "--config", FMNIST,
               "--trainer.default_root_dir", str(tmp_path), *NO_DATA, override])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert all(text in line for text in expected), line
    assert "val_size" not in line  # refused before the data module read its files
    assert not (tmp_path / "checkpoints").exists()
