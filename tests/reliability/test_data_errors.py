"""Data, through ``glnet fit`` on a tiny ImageNet-style tree of real JPEG files: a broken layout is
one error line naming the folder; corrupt and truncated JPEGs are skipped and counted (default) or
fail with one line naming the file (``on_bad_image=raise``); grayscale and CMYK files train as RGB.
(Missing roots and split folders: tests/cli/test_cli_errors.py and tests/data.)"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glnet_lightning.cli.main import main

pytestmark = pytest.mark.slow


def save_jpeg(path: Path, mode: str, seed: int) -> Path:
    """A real 40x48 JPEG of random pixels, stored in ``mode`` (RGB, L = grayscale, CMYK)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").convert(mode).save(path, format="JPEG", quality=90)
    return path


TINY = ("{depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], head_dim: 16, "
        "stage_mixers: [glmix, glmix, glmix, glmix], num_slots: 4}")


def fit_args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--trainer.default_root_dir", str(run), "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--model.backbone={{class_path: glnet_stl, init_args: {TINY}}}", "--model.warmup_epochs=0",
            "--model.mixup=0", "--model.cutmix=0", "--model.ema_decay=null", "--model.slot_map_every_n_epochs=0",
            "--data=glnet_lightning.data.ImageNetDataModule", f"--data.root={root}", "--data.image_size=32",
            "--data.batch_size=12", "--data.num_workers=0", "--data.persistent_workers=false",
            "--data.pin_memory=false", *extra]


@pytest.fixture
def tree(tmp_path) -> Path:
    """train: 3 classes x 2 good RGB + 1 grayscale + 1 CMYK, one garbage and one truncated JPEG; val: 1 each."""
    root = tmp_path / "tree"
    seed = 0
    for name in ("cat", "dog", "fox"):
        for split, mode in [("train", "RGB"), ("train", "RGB"), ("train", "L"), ("train", "CMYK"), ("val", "RGB")]:
            seed += 1
            save_jpeg(root / split / name / f"{name}_{seed}.JPEG", mode, seed)
    (root / "train" / "cat" / "cat_garbage.JPEG").write_bytes(b"\x89not a jpeg at all" * 100)
    whole = save_jpeg(root / "train" / "dog" / "dog_truncated.JPEG", "RGB", seed=99).read_bytes()
    (root / "train" / "dog" / "dog_truncated.JPEG").write_bytes(whole[: len(whole) // 2])
    return root


def test_bad_images_are_skipped_and_counted_and_gray_or_cmyk_train_as_rgb(tree, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="glnet_lightning.data"):
        assert main(fit_args(tree, tmp_path / "run", "--data.batch_size=14")) == 0  # one batch = every image
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "cat_garbage.JPEG" in warnings and "dog_truncated.JPEG" in warnings
    assert "2 unreadable image(s)" in warnings
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_bad_image_with_raise_is_one_line_naming_the_file(tree, one_error_line, capsys, tmp_path):
    rc = main(fit_args(tree, tmp_path / "run", "--data.batch_size=14", "--data.on_bad_image=raise"))
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "cannot read image file" in line and ("cat_garbage.JPEG" in line or "dog_truncated.JPEG" in line), line


@pytest.mark.parametrize("break_tree, message", [
    (lambda root: shutil.rmtree(root / "val" / "fox"), "1 class(es) present in {root}/train but missing in {root}/val: fox"),
    (lambda root: [p.unlink() for p in (root / "val" / "dog").iterdir()],
     "1 class folder(s) in {root}/val contain no images"),
    (lambda root: [shutil.rmtree(p) for p in (root / "train").iterdir()], "no class folders in {root}/train"),
], ids=["class-missing-in-val", "empty-class-folder", "no-class-folders"])
def test_broken_layout_is_one_line_naming_the_folder(tree, break_tree, message, one_error_line, capsys, tmp_path):
    break_tree(tree)
    rc = main(fit_args(tree, tmp_path / "run"))
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and message.format(root=tree) in line, line
