"""Data, through ``glnet fit`` on a tiny ImageNet-style tree of real JPEG files (testkit's ``broken_tree``):
a broken layout is one error line naming the folder; corrupt and truncated JPEGs are skipped and counted
(default) or fail with one line naming the file (``on_bad_image=raise``); grayscale and CMYK files train
as RGB. (Missing roots and split folders: tests/cli/test_cli_errors.py and tests/data.)"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from glnet_lightning.cli.main import main
from testkit import BAD_FILES, one_error_line, tiny_flow

BAD_NAMES = [Path(bad).name for bad in BAD_FILES]  # random bytes, a truncated JPEG


def fit_args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--trainer.default_root_dir", str(run), "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--model.backbone={{class_path: glnet_stl, init_args: {tiny_flow()}}}", "--model.warmup_epochs=0",
            "--model.mixup=0", "--model.cutmix=0", "--model.ema_decay=null", "--model.slot_map_every_n_epochs=0",
            "--data=glnet_lightning.data.ImageNetDataModule", f"--data.root={root}", "--data.image_size=32",
            "--data.batch_size=12", "--data.num_workers=0", "--data.persistent_workers=false",
            "--data.pin_memory=false", *extra]


def test_bad_images_are_skipped_and_counted_and_gray_or_cmyk_train_as_rgb(broken_tree, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="glnet_lightning.data"):
        # one batch = every training image: the good RGB ones, the grayscale and CMYK ones, the two bad ones
        assert main(fit_args(broken_tree, tmp_path / "run", "--data.batch_size=14")) == 0
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert all(name in warnings for name in BAD_NAMES), warnings
    assert "2 unreadable image(s)" in warnings
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_bad_image_with_raise_is_one_line_naming_the_file(broken_tree, capsys, tmp_path):
    rc = main(fit_args(broken_tree, tmp_path / "run", "--data.batch_size=14", "--data.on_bad_image=raise"))
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "cannot read image file" in line and any(name in line for name in BAD_NAMES), line


@pytest.mark.parametrize("break_tree, message", [
    (lambda root: shutil.rmtree(root / "val" / "fox"), "1 class(es) present in {root}/train but missing in {root}/val: fox"),
    (lambda root: [p.unlink() for p in (root / "val" / "dog").iterdir()],
     "1 class folder(s) in {root}/val contain no images"),
    (lambda root: [shutil.rmtree(p) for p in (root / "train").iterdir()], "no class folders in {root}/train"),
], ids=["class-missing-in-val", "empty-class-folder", "no-class-folders"])
def test_broken_layout_is_one_line_naming_the_folder(broken_tree, break_tree, message, capsys, tmp_path):
    tree = shutil.copytree(broken_tree, tmp_path / "tree")  # the session's tree is shared: break a copy
    break_tree(tree)
    rc = main(fit_args(tree, tmp_path / "run"))
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and message.format(root=tree) in line, line
