"""Fashion scenes: deterministic drawing, labels that agree with each other, the ADE20K and COCO trees, and
``prepare_scenes`` writing once and atomically."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from glnet_lightning.data import fashion_scenes
from glnet_lightning.data.fashion_mnist import CLASS_NAMES, FashionMNISTNotFoundError
from glnet_lightning.data.fashion_scenes import (
    SCENE_CLASSES,
    STAMP_NAME,
    ScenesRootError,
    garment_masks,
    make_scenes,
    prepare_scenes,
)
from testkit.plugin import FASHION_SCENES

SMALL = {"num_train": 4, "num_val": 2, "size": 32}


def _same(a, b) -> bool:
    return (np.array_equal(a.image, b.image) and len(a.instances) == len(b.instances)
            and all(x.category == y.category and np.array_equal(x.mask, y.mask)
                    for x, y in zip(a.instances, b.instances)))


def _tree(root) -> dict[str, int]:
    """Every file under ``root`` and its modification time (ns): what a rewrite would change."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_scene_classes_are_background_then_the_garments():
    assert SCENE_CLASSES == ("background", *CLASS_NAMES) and len(SCENE_CLASSES) == 11


def test_scenes_are_deterministic_from_the_seed(fashion_mnist):
    first = make_scenes(6, seed=3, fashion_mnist=fashion_mnist)
    again = make_scenes(6, seed=3, fashion_mnist=fashion_mnist)
    assert all(_same(a, b) for a, b in zip(first, again))
    # scene i does not depend on how many are asked for
    assert all(_same(a, b) for a, b in zip(first, make_scenes(2, seed=3, fashion_mnist=fashion_mnist)))
    other_seed = make_scenes(6, seed=4, fashion_mnist=fashion_mnist)
    val = make_scenes(6, seed=3, split="val", fashion_mnist=fashion_mnist)
    assert not any(_same(a, b) for a, b in zip(first, other_seed))
    assert not any(_same(a, b) for a, b in zip(first, val))


def test_instances_and_semantic_mask_agree(fashion_mnist):
    size, max_objects = 48, 6
    scenes = make_scenes(24, size=size, seed=1, max_objects=max_objects, fashion_mnist=fashion_mnist)
    counts = [len(s.instances) for s in scenes]
    assert min(counts) >= 1 and max(counts) <= max_objects and max(counts) >= 3
    for scene in scenes:
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        semantic = scene.semantic_mask()
        stacked = np.stack([mask for _, mask in scene.instances])
        assert stacked.max(axis=0).sum() == stacked.sum()  # no two instances share a pixel
        assert np.array_equal(semantic > 0, stacked.any(axis=0))
        for category, mask in scene.instances:
            assert 0 <= category < 10 and mask.sum() >= fashion_scenes._MIN_VISIBLE_PIXELS
            assert np.all(semantic[mask] == category + 1)
            rows, cols = np.nonzero(mask)
            assert np.ptp(rows) < round(0.65 * size) and np.ptp(cols) < round(0.65 * size)  # garment_scale's upper end
        assert (semantic == 0).mean() > 0.1  # the background shows
        assert scene.image.reshape(-1, 3)[semantic.ravel() == 0].std(axis=0).min() > 5  # and is not flat
    assert len({c for s in scenes for c, _ in s.instances}) >= 8


def test_garment_mask_fills_small_holes_keeps_large_ones_drops_specks():
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 4:24, 4:24] = 200
    image[0, 8:10, 8:10] = 0  # a 4-pixel dark patch inside: texture
    image[0, 12:20, 12:20] = 3  # an 8 x 8 hole, darker than the threshold: background (a bag's handle)
    image[0, 26, 26] = 255  # a one-pixel speck outside the garment
    mask = garment_masks(image)[0]
    assert mask[8:10, 8:10].all() and not mask[12:20, 12:20].any() and not mask[26, 26]
    assert mask.sum() == 20 * 20 - 64


def test_ade20k_layout_round_trips(fashion_scenes_ade20k):
    root = fashion_scenes_ade20k
    size, seed = FASHION_SCENES["size"], FASHION_SCENES["seed"]
    for split, folder, num in (("train", "training", FASHION_SCENES["num_train"]),
                               ("val", "validation", FASHION_SCENES["num_val"])):
        images = sorted((root / "images" / folder).glob("*.jpg"))
        annotations = sorted((root / "annotations" / folder).glob("*.png"))
        assert len(images) == len(annotations) == num
        assert [p.stem for p in images] == [p.stem for p in annotations]
        for scene, image_path, annotation_path in zip(make_scenes(num, size=size, seed=seed, split=split),
                                                      images, annotations):
            with Image.open(annotation_path) as annotation, Image.open(image_path) as image:
                assert annotation.mode == "L" and annotation.size == image.size == (size, size)
                labels, pixels = np.asarray(annotation), np.asarray(image.convert("RGB"))
            assert labels.min() >= 1 and labels.max() <= 11  # 0 ("other") unused, 1 background
            assert np.array_equal(labels - 1, scene.semantic_mask())
            assert np.abs(pixels.astype(int) - scene.image).mean() < 4  # JPEG quality 95


def test_coco_layout_loads_in_pycocotools(fashion_scenes_coco):
    from pycocotools.coco import COCO

    root = fashion_scenes_coco
    size, seed = FASHION_SCENES["size"], FASHION_SCENES["seed"]
    for split, num in (("train", FASHION_SCENES["num_train"]), ("val", FASHION_SCENES["num_val"])):
        coco = COCO(str(root / "annotations" / f"instances_{split}2017.json"))
        assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == list(enumerate(CLASS_NAMES, 1))
        scenes = make_scenes(num, size=size, seed=seed, split=split)
        assert sorted(coco.getImgIds()) == list(range(1, num + 1))
        for image_id, scene in zip(sorted(coco.getImgIds()), scenes):
            info = coco.loadImgs(image_id)[0]
            with Image.open(root / f"{split}2017" / info["file_name"]) as image:
                assert image.size == (info["width"], info["height"]) == (size, size)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert len(annotations) == len(scene.instances)
            for annotation, (category, mask) in zip(annotations, scene.instances):
                x, y, w, h = annotation["bbox"]
                assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
                rows, cols = np.nonzero(mask)
                assert [x, y, w, h] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
                assert annotation["category_id"] == category + 1 and annotation["iscrowd"] == 0
                assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)
                assert annotation["area"] == mask.sum()


def test_prepare_scenes_writes_once_and_rewrites_on_other_settings(fashion_mnist, tmp_path):
    root = tmp_path / "scenes"
    assert prepare_scenes(root, "ade20k", fashion_mnist=fashion_mnist, **SMALL) == root
    written = _tree(root)
    assert len(written) == 2 * (SMALL["num_train"] + SMALL["num_val"]) + 1
    assert json.loads((root / STAMP_NAME).read_text())["size"] == SMALL["size"]
    prepare_scenes(root, "ade20k", fashion_mnist=fashion_mnist, **SMALL)
    assert _tree(root) == written  # same settings: nothing rewritten
    prepare_scenes(root, "ade20k", fashion_mnist=fashion_mnist, **{**SMALL, "seed": 1})
    assert json.loads((root / STAMP_NAME).read_text())["seed"] == 1
    assert _tree(root).keys() == written.keys() and _tree(root) != written
    assert [p.name for p in tmp_path.iterdir()] == ["scenes"]  # no temporary folder left behind


def test_prepare_scenes_crash_leaves_the_old_tree(fashion_mnist, tmp_path, monkeypatch):
    root = tmp_path / "scenes"
    prepare_scenes(root, "coco", fashion_mnist=fashion_mnist, **SMALL)
    before = _tree(root)

    def write_half_then_fail(folder, scenes_by_split):
        fashion_scenes.write_coco_layout(folder, {"train": scenes_by_split["train"][:1]})
        raise KeyboardInterrupt

    monkeypatch.setitem(fashion_scenes._WRITERS, "coco", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prepare_scenes(root, "coco", fashion_mnist=fashion_mnist, **{**SMALL, "seed": 7})
    assert _tree(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["scenes"]


def test_prepare_scenes_never_deletes_a_folder_it_did_not_write(fashion_mnist, tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(ScenesRootError, match="not a fashion scenes tree"):
        prepare_scenes(root, "ade20k", fashion_mnist=fashion_mnist, **SMALL)
    assert (root / "notes.txt").read_text() == "keep me"


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FashionMNISTNotFoundError) as error:
        make_scenes(1, fashion_mnist=tmp_path / "nowhere")
    message = str(error.value)
    assert "\n" not in message and "dataset-fashion-mnist" in message and str(tmp_path / "nowhere") in message
