"""The ADE20K data module (data/ade20k.py): mmseg's training and validation pipelines on torchvision.transforms.v2,
``reduce_zero_label``, one-line errors naming the file before training, and the Fashion-scenes demo read the same way."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from glnet_lightning.data import ADE20KDataModule, DatasetLayoutError, FashionScenesSegmentation
from glnet_lightning.data.ade20k import ADE20K_CLASSES, IGNORE_INDEX, CatMaxRatioCrop, keep_ratio_size, pad_collate
from testkit.plugin import FASHION_SCENES


def _module(root, **kwargs):
    return ADE20KDataModule(str(root), **{"crop_size": 64, "scale": (256, 64), "batch_size": 2, "num_workers": 0,
                                          **kwargs})


def _annotation(root, split, index):
    return root / "annotations" / split / f"ADE_{split}_{index:08d}.png"


def test_training_batches_are_joint_crops_with_zero_label_reduced(ade20k_tree):
    data = _module(ade20k_tree)
    data.setup("fit")
    assert data.num_classes == len(ADE20K_CLASSES) == 150
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 64, 64) and batch["mask"].dtype == torch.int64
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(150)) | {IGNORE_INDEX} and IGNORE_INDEX in values  # 0 ("other") is ignored


def test_validation_keeps_the_annotation_at_its_size_and_the_image_resized_keeping_its_ratio(ade20k_tree):
    data = _module(ade20k_tree, val_batch_size=3)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    for i, sample in enumerate(data.val_set.samples):
        width, height = Image.open(sample.image).size
        assert batch["mask_size"][i].tolist() == [height, width]
        assert batch["image_size"][i].tolist() == list(keep_ratio_size(height, width, (256, 64)))
        raw = np.asarray(Image.open(sample.annotation)).astype(np.int64)
        expected = torch.from_numpy(np.where(raw == 0, IGNORE_INDEX, raw - 1))
        assert torch.equal(batch["mask"][i, :height, :width], expected)
        assert (batch["mask"][i, height:] == IGNORE_INDEX).all() and (batch["mask"][i, :, width:] == IGNORE_INDEX).all()


def test_a_grayscale_image_becomes_three_channels(ade20k_tree):
    data = _module(ade20k_tree)
    data.setup("fit")
    gray = next(i for i, s in enumerate(data.train_set.samples) if Image.open(s.image).mode == "L")
    assert data.train_set[gray]["image"].shape == (3, 64, 64)


def test_keep_ratio_size_is_mmcv_s():
    assert keep_ratio_size(512, 683, (2048, 512)) == (512, 683)
    assert keep_ratio_size(683, 512, (2048, 512)) == (683, 512)  # the long side may be the height
    assert keep_ratio_size(300, 4000, (2048, 512)) == (154, 2048)  # limited by the long side
    assert keep_ratio_size(256, 341, (1024, 256)) == (256, 341)


def test_crops_keep_any_class_under_cat_max_ratio():
    mask = torch.ones(128, 128, dtype=torch.uint8)
    mask[:, :48] = 2  # a 64 crop holds less than 75 % of class 1 only when it starts left of column 33
    mask[:4] = IGNORE_INDEX  # ignored pixels count for no class

    def share_of_largest(crop: CatMaxRatioCrop, seed: int) -> float:
        torch.manual_seed(seed)
        image, cropped = crop(tv_tensors.Image(torch.zeros(3, 128, 128)), tv_tensors.Mask(mask))
        labels = cropped[cropped != IGNORE_INDEX]
        assert cropped.shape == (64, 64) and image.shape == (3, 64, 64)
        return labels.bincount().max().item() / labels.numel()

    assert all(share_of_largest(CatMaxRatioCrop(64, 0.75), seed) < 0.75 for seed in range(20))
    assert any(share_of_largest(CatMaxRatioCrop(64, 1.0), seed) >= 0.75 for seed in range(20))


def test_pad_collate_pads_images_with_zeros_and_masks_with_the_ignore_index():
    samples = [{"image": torch.ones(3, 4, 6), "mask": torch.zeros(5, 3, dtype=torch.long)},
               {"image": torch.ones(3, 7, 2), "mask": torch.zeros(2, 2, dtype=torch.long)}]
    batch = pad_collate(samples)
    assert batch["image"].shape == (2, 3, 7, 6) and batch["mask"].shape == (2, 5, 3)
    assert batch["image"][0, :, 4:].abs().sum() == 0 and batch["image"][1, :, :, 2:].abs().sum() == 0
    assert (batch["mask"][1, 2:] == IGNORE_INDEX).all() and (batch["mask"][1, :2, :2] == 0).all()
    assert batch["image_size"].tolist() == [[4, 6], [7, 2]] and batch["mask_size"].tolist() == [[5, 3], [2, 2]]


def _break(root, mistake: str):
    """The ``ade20k_tree`` copy with one mistake; returns the file the error must name."""
    training = root / "images" / "training"
    if mistake == "image without annotation":
        _annotation(root, "training", 2).unlink()
        return training / "ADE_training_00000002.jpg"
    if mistake == "annotation without image":
        (training / "ADE_training_00000003.jpg").unlink()
        return _annotation(root, "training", 3)
    if mistake == "annotation of another size":
        Image.fromarray(np.ones((10, 12), np.uint8)).save(_annotation(root, "validation", 1))
        return _annotation(root, "validation", 1)
    if mistake == "label above the classes":
        labels = np.asarray(Image.open(_annotation(root, "training", 4))).copy()
        labels[5, 5] = 151
        Image.fromarray(labels).save(_annotation(root, "training", 4))
        return _annotation(root, "training", 4)
    if mistake == "colour annotation":
        Image.open(_annotation(root, "training", 1)).convert("RGB").save(_annotation(root, "training", 1))
        return _annotation(root, "training", 1)
    if mistake == "empty split":
        for image in (root / "images" / "validation").iterdir():
            image.unlink()
        for annotation in (root / "annotations" / "validation").iterdir():
            annotation.unlink()
        return root / "images" / "validation"
    assert mistake == "missing folder"
    shutil.rmtree(root / "annotations" / "validation")
    return root / "annotations" / "validation"


@pytest.mark.parametrize("mistake, words", [
    ("image without annotation", "has no annotation"),
    ("annotation without image", "has no image"),
    ("annotation of another size", "is 12x10 but its image is"),
    ("label above the classes", "has label value 151, above the 150 classes"),
    ("colour annotation", "is a RGB image: it must hold one class index per pixel"),
    ("empty split", "the val split is empty"),
    ("missing folder", "missing folder"),
])
def test_a_bad_tree_stops_in_setup_with_one_line_naming_the_file(ade20k_tree, tmp_path, mistake, words):
    root = shutil.copytree(ade20k_tree, tmp_path / "ADEChallengeData2016")
    named = _break(root, mistake)
    with pytest.raises(DatasetLayoutError) as error:
        _module(root).setup("fit")
    message = str(error.value)
    assert words in message and str(named) in message and "\n" not in message


def test_without_the_label_check_the_loader_still_names_a_bad_file(ade20k_tree, tmp_path):
    root = shutil.copytree(ade20k_tree, tmp_path / "ADEChallengeData2016")
    named = _break(root, "label above the classes")
    data = _module(root, check_labels=False)
    data.setup("fit")  # sizes only: passes
    index = next(i for i, s in enumerate(data.train_set.samples) if s.annotation == str(named))
    with pytest.raises(DatasetLayoutError, match="label value 151"):
        data.train_set[index]


def test_fashion_scenes_are_read_through_the_ade20k_path(fashion_scenes_ade20k, fashion_mnist):
    data = FashionScenesSegmentation(root=str(fashion_scenes_ade20k), fashion_mnist=str(fashion_mnist), num_workers=0,
                                     batch_size=4, **FASHION_SCENES)
    stamp = (fashion_scenes_ade20k / "fashion_scenes.json").stat().st_mtime_ns
    data.prepare_data()  # the same settings: the tree is kept
    assert (fashion_scenes_ade20k / "fashion_scenes.json").stat().st_mtime_ns == stamp
    data.setup("fit")
    assert data.num_classes == 11 and data.class_names[0] == "background"
    assert len(data.train_set) == FASHION_SCENES["num_train"] and len(data.val_set) == FASHION_SCENES["num_val"]
    masks = torch.cat([data.val_set[i]["mask"].flatten() for i in range(len(data.val_set))])
    assert set(masks.unique().tolist()) <= set(range(11)) and (masks == 0).any() and (masks > 0).any()
