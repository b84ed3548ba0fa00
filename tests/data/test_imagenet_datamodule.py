"""ImageNetDataModule on a tiny generated folder tree of real JPEG files (some of them broken).

The tree is the ``broken_tree`` fixture of testkit.plugin (shared with test_streaming.py)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler as StatefulRandomSampler

from glnet_lightning.data import DatasetLayoutError, ImageNetDataModule, UnreadableImageError, validate_layout
from glnet_lightning.data.image_dataset import load_rgb
from glnet_lightning.data.samplers import RepeatAugDistributedSampler
from testkit import BAD_FILES, BROKEN_TREE_CLASSES, save_jpeg

def _module(root: Path, **kwargs) -> ImageNetDataModule:
    kwargs = {"image_size": 32, "batch_size": 4, "num_workers": 0, **kwargs}
    return ImageNetDataModule(str(root), **kwargs)


def _index_of(dataset, relative: str) -> int:
    wanted = str(Path(relative).relative_to(Path(relative).parts[0]))
    return next(i for i in range(len(dataset)) if dataset.samples.path(i).endswith(wanted))


# -- layout and decoding ---------------------------------------------------------------------------
def test_layout_lists_classes_and_images(broken_tree):
    layout = validate_layout(broken_tree)
    assert layout.classes == BROKEN_TREE_CLASSES
    assert len(layout.train) == 11 and len(layout.val) == 6
    assert layout.train.targets.tolist() == [0] * 4 + [1] * 4 + [2] * 3
    assert not any(p.endswith(b".txt") for p in layout.train.paths)


@pytest.mark.parametrize("name", ["fox_gray.JPEG", "fox_cmyk.JPEG"])
def test_grayscale_and_cmyk_are_converted_to_rgb(broken_tree, name):
    path = broken_tree / "train" / "fox" / name
    assert Image.open(path).mode in ("L", "CMYK")
    image = load_rgb(str(path))
    assert image.mode == "RGB" and image.size == (48, 40)


def test_load_rgb_names_the_bad_file(broken_tree):
    for relative in BAD_FILES:
        with pytest.raises(UnreadableImageError, match=Path(relative).name):
            load_rgb(str(broken_tree / relative))


# -- data module -----------------------------------------------------------------------------------
def test_train_and_val_batches_have_the_right_shape(broken_tree):
    dm = _module(broken_tree)
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.class_names == BROKEN_TREE_CLASSES
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 3
    xs, ys = zip(*dm.val_dataloader())
    assert torch.cat(xs).shape == (6, 3, 32, 32)
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]


def test_val_set_serves_test_and_predict(broken_tree):
    dm = _module(broken_tree)
    dm.setup("test")
    assert dm.train_set is None
    assert dm.test_dataloader().dataset is dm.val_set is dm.predict_dataloader().dataset


def test_skip_replaces_and_counts_bad_images(broken_tree, caplog):
    dm = _module(broken_tree, on_bad_image="skip")
    dm.setup("fit")
    dataset = dm.train_set
    with caplog.at_level(logging.WARNING, logger="glnet_lightning.data"):
        items = [dataset[i] for i in range(len(dataset))]
        again = [dataset[i] for i in range(len(dataset))]  # known-bad files are not re-read nor re-reported
    assert all(x.shape == (3, 32, 32) for x, _ in items + again)
    assert dataset.num_bad_images == 2
    assert [Path(p).name for p in dataset.bad_images] == ["cat_bad.JPEG", "dog_truncated.JPEG"]
    bad_index = _index_of(dataset, BAD_FILES[0])
    assert items[bad_index][1] == int(dataset.samples.targets[bad_index + 1])  # replaced by the next file
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "cat_bad.JPEG" in warnings[0] and "1 unreadable image(s)" in warnings[0]
    assert "2 unreadable image(s)" in warnings[1] and "dog_truncated.JPEG" in warnings[1]
    assert dm.bad_image_counts() == {"train": 2, "val": 0}


def test_skip_count_is_shared_with_worker_processes(broken_tree):
    dm = _module(broken_tree, num_workers=1, batch_size=11, auto_augment=None, re_prob=0.0)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0][0].shape == (11, 3, 32, 32)
    assert dm.train_set.num_bad_images == 2


def test_raise_names_the_file(broken_tree):
    dm = _module(broken_tree, on_bad_image="raise", batch_size=11)  # one batch holds every file
    dm.setup("fit")
    for relative in BAD_FILES:
        with pytest.raises(UnreadableImageError, match=Path(relative).name):
            dm.train_set[_index_of(dm.train_set, relative)]
    with pytest.raises(UnreadableImageError, match=r"cannot read image file .*(cat_bad|dog_truncated)\.JPEG"):
        list(dm.train_dataloader())
    assert dm.train_set.num_bad_images == 0


def test_invalid_bad_image_policy():
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        ImageNetDataModule("/nonexistent", on_bad_image="ignore")


def test_recipe_transforms():
    dm = ImageNetDataModule("/nonexistent")
    train = repr(dm.train_transform())
    assert "RandAugment" in train and "RandomErasing" in train and "bicubic" in train.lower()
    eval_steps = dm.eval_transform().transforms
    assert eval_steps[0].size == 256 and eval_steps[1].size == (224, 224)  # 224 / 0.875, then centre crop


def test_randaugment_survives_zero_bit_posterize():
    from timm.data.auto_augment import posterize

    image = Image.new("RGB", (8, 8), (200, 100, 50))
    with pytest.raises(ValueError):  # what the unpatched timm + Pillow >= 13 combination does
        posterize(image, 0)
    transform = ImageNetDataModule("/nonexistent", image_size=16, auto_augment="rand-m10-n3-inc1").train_transform()
    rand_augment = next(t for t in transform.transforms if hasattr(t, "ops"))
    posterize_ops = [op for op in rand_augment.ops if op.name == "PosterizeIncreasing"]
    assert len(posterize_ops) == 1
    posterize_ops[0].prob = 1.0  # magnitude 10 -> keep 0 bits
    assert np.asarray(posterize_ops[0](image)).max() == 0  # black, as with Pillow < 13
    torch.manual_seed(0)
    for _ in range(30):  # magnitude 10 always asks for 0 bits
        assert transform(image).shape == (3, 16, 16)


# -- samplers --------------------------------------------------------------------------------------
def test_single_process_uses_a_shuffled_loader_that_saves_its_position(broken_tree):
    dm = _module(broken_tree)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, StatefulDataLoader) and isinstance(loader.sampler, StatefulRandomSampler)


def test_ddp_uses_repeated_augmentation_sampler(broken_tree):
    dm = _module(broken_tree)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    # a DistributedSampler subclass, so Lightning does not shard it a second time
    assert isinstance(sampler, RepeatAugDistributedSampler) and isinstance(sampler, DistributedSampler)
    assert sampler.num_replicas == 2 and sampler.rank == 1
    ranks = [RepeatAugDistributedSampler(dm.train_set, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    per_rank = [list(s) for s in ranks]
    assert [len(p) for p in per_rank] == [len(sampler)] * 2 == [6, 6]  # ceil(11 / 2) per rank
    # each chosen image appears 3 times in the epoch, its repeats spread over both ranks
    chosen = set(per_rank[0]) | set(per_rank[1])
    assert len(chosen) == 4 and set(per_rank[0]) == set(per_rank[1])

    dm_plain = _module(broken_tree, repeated_aug=False)
    dm_plain.trainer = SimpleNamespace(world_size=2, global_rank=0)
    dm_plain.setup("fit")
    assert isinstance(dm_plain.train_dataloader().sampler, StatefulRandomSampler)  # Lightning injects its own


# -- layout errors ---------------------------------------------------------------------------------
@pytest.fixture
def tiny_tree():
    """``tiny_tree(root, train_classes, val_classes)``: one 8x8 JPEG per class folder."""

    def make(root: Path, train: list[str], val: list[str]) -> Path:
        for split, classes in (("train", train), ("val", val)):
            (root / split).mkdir(parents=True, exist_ok=True)
            for name in classes:
                save_jpeg(root / split / name / "a.jpg", size=(8, 8))
        return root

    return make


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset root .*nope does not exist"):
        _module(tmp_path / "nope").setup("fit")


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split_folder(tmp_path, split, tiny_tree):
    root = tiny_tree(tmp_path, ["a"], ["a"])
    for f in (root / split / "a").iterdir():
        f.unlink()
    (root / split / "a").rmdir()
    (root / split).rmdir()
    with pytest.raises(FileNotFoundError, match=rf"missing '{split}/' folder: .*{split} does not exist"):
        validate_layout(root)


def test_no_class_folders(tmp_path, tiny_tree):
    root = tiny_tree(tmp_path, [], ["a"])
    save_jpeg(root / "train" / "loose.jpg", size=(8, 8))
    with pytest.raises(DatasetLayoutError, match=r"no class folders in .*train"):
        validate_layout(root)


def test_class_folder_without_images(tmp_path, tiny_tree):
    root = tiny_tree(tmp_path, ["a", "b"], ["a", "b"])
    (root / "val" / "b" / "a.jpg").unlink()
    (root / "val" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetLayoutError, match=r"1 class folder\(s\) in .*val contain no images.*val/b"):
        validate_layout(root)


def test_class_missing_in_val(tmp_path, tiny_tree):
    root = tiny_tree(tmp_path, ["a", "b", "c"], ["a"])
    with pytest.raises(DatasetLayoutError, match=r"2 class\(es\) present in .*train but missing in .*val: b, c"):
        _module(root).setup("fit")


def test_class_missing_in_train(tmp_path, tiny_tree):
    root = tiny_tree(tmp_path, ["a"], ["a", "z"])
    with pytest.raises(DatasetLayoutError, match=r"present in .*val but missing in .*train: z"):
        validate_layout(root)
