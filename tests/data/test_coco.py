"""The COCO data module (data/coco.py): what it reads from a COCO-layout tree, what training leaves out,
and the one-line errors for a tree it cannot train on."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from glnet_lightning.data.coco import COCODataModule, FashionScenesDetection
from glnet_lightning.data.image_folder import DatasetLayoutError
from testkit.plugin import COCO_TREE_CATEGORIES


def _annotations(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_every_image_and_object_of_the_val_split_with_labels_in_category_order(coco_tree):
    data = COCODataModule(str(coco_tree), batch_size=2, num_workers=0)
    assert data.num_classes == 4 and data.class_names == ["background", "square", "disc", "bar"]
    assert data.category_ids == [c["id"] for c in COCO_TREE_CATEGORIES]
    data.setup("validate")
    dataset = data.datasets["val"]
    document = _annotations(coco_tree, "val2017")
    assert len(dataset) == len(document["images"]) == 4  # the image without objects is evaluated too
    for index, image in enumerate(document["images"]):
        pixels, target = dataset[index]
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, image["height"], image["width"])  # gray -> RGB
        anns = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        assert int(target["image_id"]) == image["id"] and target["file_name"] == image["file_name"]
        assert target["labels"].tolist() == [data.category_ids.index(a["category_id"]) + 1 for a in anns]
        assert target["iscrowd"].tolist() == [a["iscrowd"] for a in anns]
        assert target["masks"].shape == (len(anns), image["height"], image["width"])
        for ann, box, mask in zip(anns, target["boxes"], target["masks"]):
            x, y, w, h = ann["bbox"]
            torch.testing.assert_close(box, torch.tensor([x, y, x + w, y + h]))
            # RLE (crowd ones uncompressed) decodes exactly; a polygon is rasterised to within its outline
            exact = isinstance(ann["segmentation"], dict)
            assert mask.sum().item() == pytest.approx(ann["area"], rel=0 if exact else 0.15)
            ys, xs = np.nonzero(mask.numpy())
            assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
    assert sum(t["iscrowd"].sum().item() for _, t in (dataset[i] for i in range(len(dataset)))) == 1


def test_training_leaves_out_crowd_regions_and_images_without_objects_and_flips(coco_tree):
    document = _annotations(coco_tree, "train2017")
    plain = COCODataModule(str(coco_tree), num_workers=0, flip_prob=0.0)
    plain.setup("fit")
    flipped = COCODataModule(str(coco_tree), num_workers=0, flip_prob=1.0)
    flipped.setup("fit")
    train = plain.datasets["train"]
    with_objects = {a["image_id"] for a in document["annotations"] if not a["iscrowd"]}
    assert len(train) == len(with_objects) == len(document["images"]) - 1
    crowded = next(a["image_id"] for a in document["annotations"] if a["iscrowd"])
    for index in range(len(train)):
        pixels, target = train[index]
        mirror, mirrored = flipped.datasets["train"][index]
        assert not target["iscrowd"].any()
        if int(target["image_id"]) == crowded:
            assert len(target["labels"]) == sum(a["image_id"] == crowded and not a["iscrowd"]
                                                for a in document["annotations"])
        width = pixels.shape[-1]
        assert torch.equal(mirror, pixels.flip(-1)) and torch.equal(mirrored["masks"], target["masks"].flip(-1))
        expected = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([width, 0, width, 0])
        torch.testing.assert_close(mirrored["boxes"], expected)
    images, targets = next(iter(plain.train_dataloader()))
    assert isinstance(images, list) and len(images) == len(targets) == 2
    assert images[0].shape[-2:] == targets[0]["masks"].shape[-2:]  # own sizes, no resize or padding here


def test_box_detectors_need_no_segmentation(coco_tree, tmp_path):
    root = _copy(coco_tree, tmp_path)
    document = _annotations(root, "train2017")
    for ann in document["annotations"]:
        del ann["segmentation"]
    _write(root, "train2017", document)
    boxes_only = COCODataModule(str(root), num_workers=0, masks=False)
    boxes_only.setup("fit")
    assert "masks" not in boxes_only.datasets["train"][0][1]
    with pytest.raises(DatasetLayoutError, match="has no segmentation: .*--data.masks false"):
        COCODataModule(str(root), num_workers=0).setup("fit")


def _copy(tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tree, tmp_path / "coco"))


def _write(root: Path, split: str, document: dict) -> None:
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


def _break(kind: str, root: Path) -> str:
    """Damage the copied tree one way; the words the error line must have."""
    train = _annotations(root, "train2017")
    if kind == "missing image":
        (root / "train2017" / train["images"][1]["file_name"]).unlink()
        return rf"1 image file\(s\) listed in .*instances_train2017.json are missing from .*train2017: " \
               rf"{train['images'][1]['file_name']}"
    if kind == "box outside":
        train["annotations"][2]["bbox"][0] = train["images"][1]["width"] - 5.0
        _write(root, "train2017", train)
        return rf"annotation {train['annotations'][2]['id']} in .*instances_train2017.json: box .* lies outside its " \
               rf"image {train['images'][1]['file_name']} \(97 x 130 px\)"
    if kind == "unknown category":
        train["annotations"][0]["category_id"] = 5
        _write(root, "train2017", train)
        return r"has category id 5, which the file does not declare \(categories: \[3, 7, 11\]\)"
    if kind == "unknown image":
        train["annotations"][0]["image_id"] = 999
        _write(root, "train2017", train)
        return r"refers to image id 999, which the file does not list"
    if kind == "empty split":
        _write(root, "val2017", {**_annotations(root, "val2017"), "images": [], "annotations": []})
        return r"instances_val2017.json lists no images: the val2017 split is empty"
    if kind == "nothing to train on":
        train["annotations"] = [a for a in train["annotations"] if a["iscrowd"]]
        _write(root, "train2017", train)
        return r"no image of .*instances_train2017.json has an object to train on"
    if kind == "other categories":
        val = _annotations(root, "val2017")
        val["categories"] = val["categories"][:2]
        val["annotations"] = [a for a in val["annotations"] if a["category_id"] != 11]
        _write(root, "val2017", val)
        return r"instances_val2017.json declares category ids \[3, 7\] but instances_train2017.json declares " \
               r"\[3, 7, 11\]: the splits must share one category list"
    if kind == "not json":
        (root / "annotations" / "instances_train2017.json").write_text("{\"images\": [")
        return r"instances_train2017.json is not valid JSON"
    if kind == "missing annotations":
        (root / "annotations" / "instances_val2017.json").unlink()
        return r"missing annotation file .*instances_val2017.json"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing image", "box outside", "unknown category", "unknown image", "empty split",
                                  "nothing to train on", "other categories", "not json", "missing annotations"])
def test_a_tree_it_cannot_train_on_stops_in_setup_with_one_line(kind, coco_tree, tmp_path):
    root = _copy(coco_tree, tmp_path)
    words = _break(kind, root)
    data = COCODataModule(str(root), num_workers=0)
    with pytest.raises((DatasetLayoutError, FileNotFoundError)) as error:
        data.setup("fit")
    assert "\n" not in str(error.value)
    assert error.match(words)


def test_an_image_whose_size_differs_from_its_annotation_is_named(coco_tree, tmp_path):
    root = _copy(coco_tree, tmp_path)
    val = _annotations(root, "val2017")
    val["images"][0]["width"] += 1
    _write(root, "val2017", val)
    data = COCODataModule(str(root), num_workers=0)
    data.setup("validate")
    with pytest.raises(DatasetLayoutError, match=rf"{val['images'][0]['file_name']} is 81 x 67 px but "
                                                 r"instances_val2017.json says 82 x 67"):
        data.datasets["val"][0]


def test_a_missing_root_is_one_line_before_anything_is_read(tmp_path):
    data = COCODataModule(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="dataset root .*nowhere does not exist"):
        data.num_classes


def test_the_fashion_scenes_demo_reads_its_tree_through_the_coco_path(fashion_scenes_coco, tmp_path):
    # its classes are known before the tree is written (the CLI links num_classes first)
    unwritten = FashionScenesDetection(root=str(tmp_path / "later"))
    assert unwritten.num_classes == 11 and unwritten.class_names[1] == "T-shirt/top"
    assert not (tmp_path / "later").exists()

    data = FashionScenesDetection(root=str(fashion_scenes_coco), num_train=16, num_val=8, size=64, num_workers=0)
    data.setup("fit")  # the tree is there with these settings: read, not rewritten
    assert len(data.datasets["val"]) == 8 and len(data.datasets["train"]) == 16
    pixels, target = data.datasets["val"][0]
    assert pixels.shape == (3, 64, 64) and ((target["labels"] >= 1) & (target["labels"] <= 10)).all()
    assert target["masks"].shape[0] == len(target["boxes"]) >= 1
