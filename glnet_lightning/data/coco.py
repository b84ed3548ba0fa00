"""COCO 2017 (or any data set in its layout) for detection and instance segmentation, as a LightningDataModule.

Layout: ``root/{train2017,val2017}/<file_name>`` with ``root/annotations/instances_{train2017,val2017}.json``
(COCO's object-detection format: ``images``, ``annotations`` with ``bbox`` [x, y, w, h] and ``segmentation``
as polygons or RLE, ``categories``). A user's own annotations in the same layout work too.

Why the checks up front (:func:`read_coco_split`): a missing image, a box outside its image or a category id
the file does not declare otherwise stops a multi-day run in its first epoch, or worse, trains on wrong
targets. Every problem is one line naming the file, the annotation and the fix.

What a sample is: the image as uint8 (3, H, W) at its own size (the detector resizes it: ``min_size`` /
``max_size``, so multi-scale training is a model setting) and a target dict in torchvision's detection
format: ``boxes`` (N, 4) x1 y1 x2 y2 in pixels, ``labels`` (N,) in 1..K (0 is the background, so
``num_classes`` = K + 1), ``masks`` (N, H, W) uint8, plus ``iscrowd``, ``area``, ``image_id`` for the COCO
evaluation and ``file_name`` for prediction output. Training drops crowd regions (torchvision's detectors
have no "ignore" regions; COCO's evaluation ignores detections on them) and boxes under 1 px, skips images
left without objects, and flips half the images horizontally.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from .image_dataset import load_rgb
from .image_folder import DatasetLayoutError
from .resumable import resumable_loader

__all__ = ["COCODataModule", "COCOSplit", "COCODetectionDataset", "FashionScenesDetection", "collate_detection",
           "read_coco_split", "annotation_file"]

logger = logging.getLogger(__name__)

#: How far (pixels) a box may reach beyond its image before it is an error, not rounding: it is clipped.
BOX_TOLERANCE = 1.0


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


@dataclass(frozen=True)
class COCOSplit:
    """One split, checked: its images (id, file, width, height), their annotations, the categories."""

    root: Path
    name: str
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]  # image id -> its annotations
    categories: list[dict[str, Any]]  # sorted by id: the contiguous label of categories[i] is i + 1

    def image_path(self, image: dict[str, Any]) -> str:
        return os.path.join(self.root, self.name, image["file_name"])


def _preview(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): expected COCO "
                                 "annotations") from exc
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if not isinstance(data, dict) or missing:
        raise DatasetLayoutError(f"{path} is not a COCO annotation file: it has no {' / '.join(missing)} list")
    return data


def read_coco_split(root: str | Path, split: str, masks: bool = True) -> COCOSplit:
    """Read and check ``root/<split>/`` and its annotation file; :class:`DatasetLayoutError` (one line) for
    no images, an annotation of an unknown image or category, a box reaching more than
    :data:`BOX_TOLERANCE` px outside its image, an object without segmentation (with ``masks``) or missing
    image files; ``FileNotFoundError`` for a missing root, split folder or annotation file."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (COCO layout: {root}/<split>/ with "
                                f"{root}/annotations/instances_<split>.json, e.g. {split})")
    path = annotation_file(root, split)
    if not path.is_file():
        raise FileNotFoundError(f"missing annotation file {path} (COCO layout: annotations/instances_<split>.json)")
    if not (root / split).is_dir():
        raise FileNotFoundError(f"missing image folder {root / split}/ for {path.name}")
    data = _read_json(path)
    if not data["images"]:
        raise DatasetLayoutError(f"{path} lists no images: the {split} split is empty")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if not categories:
        raise DatasetLayoutError(f"{path} declares no categories")
    known = {c["id"] for c in categories}
    images = {image["id"]: image for image in data["images"]}
    annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        image = images.get(ann.get("image_id"))
        where = f"annotation {ann.get('id')} in {path}"
        if image is None:
            raise DatasetLayoutError(f"{where} refers to image id {ann.get('image_id')}, which the file does not list")
        if ann.get("category_id") not in known:
            raise DatasetLayoutError(f"{where} has category id {ann.get('category_id')}, which the file does not "
                                     f"declare (categories: {sorted(known)})")
        x, y, w, h = ann["bbox"]
        width, height = image["width"], image["height"]
        if (w < 0 or h < 0 or x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE
                or y + h > height + BOX_TOLERANCE):
            raise DatasetLayoutError(f"{where}: box [x, y, w, h] = {ann['bbox']} lies outside its image "
                                     f"{image['file_name']} ({width} x {height} px)")
        if masks and not ann.get("segmentation"):
            raise DatasetLayoutError(f"{where} has no segmentation: instance masks need one per object "
                                     f"(for boxes only: --data.masks false and a box detector, e.g. RetinaNet)")
        annotations[image["id"]].append(ann)
    missing = [image["file_name"] for image in data["images"] if not (root / split / image["file_name"]).is_file()]
    if missing:
        raise DatasetLayoutError(f"{len(missing)} image file(s) listed in {path} are missing from {root / split}: "
                                 f"{_preview(missing)}")
    return COCOSplit(root, split, list(data["images"]), dict(annotations), categories)


def _decode_masks(anns: list[dict[str, Any]], height: int, width: int) -> torch.Tensor:
    """(N, H, W) uint8 masks of polygon or RLE (compressed or not) segmentations."""
    from pycocotools import mask as mask_utils

    if not anns:
        return torch.zeros((0, height, width), dtype=torch.uint8)
    decoded = []
    for ann in anns:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):  # polygons: one RLE each, merged
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE (COCO's crowd regions)
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        decoded.append(mask_utils.decode(rle))
    return torch.from_numpy(np.stack(decoded)).to(torch.uint8)


class COCODetectionDataset(Dataset):
    """``(uint8 image (3, H, W), target)`` per image of a :class:`COCOSplit` (module doc for the target).

    ``train``: crowd regions and boxes under 1 px dropped, images without objects left out, random flip
    with ``flip_prob``. ``masks``: decode the instance masks (off for box detectors)."""

    def __init__(self, split: COCOSplit, train: bool = False, masks: bool = True, flip_prob: float = 0.5) -> None:
        self.split = split
        self.train = train
        self.masks = masks
        self.flip_prob = flip_prob
        self.label_of = {c["id"]: i + 1 for i, c in enumerate(split.categories)}
        self.images = []
        self.annotations = []
        for image in split.images:
            anns = split.annotations.get(image["id"], [])
            if train:
                anns = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
                if not anns:
                    continue
            self.images.append(image)
            self.annotations.append(anns)
        if not self.images:
            raise DatasetLayoutError(f"no image of {annotation_file(split.root, split.name)} has an object to train on "
                                     f"(crowd regions and boxes under 1 px do not count)")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, anns = self.images[index], self.annotations[index]
        path = self.split.image_path(image)
        pixels = load_rgb(path)
        width, height = pixels.size
        if (width, height) != (image["width"], image["height"]):
            raise DatasetLayoutError(f"image {path} is {width} x {height} px but "
                                     f"{annotation_file(self.split.root, self.split.name).name} says "
                                     f"{image['width']} x {image['height']}: fix its width / height")
        tensor = torch.from_numpy(np.asarray(pixels, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns],
                                 dtype=torch.float32),
            "image_id": torch.tensor(int(image["id"])),
            "file_name": image["file_name"],
        }
        if self.masks:
            target["masks"] = _decode_masks(anns, height, width)
        if self.train and torch.rand(()) < self.flip_prob:
            tensor = tensor.flip(-1)
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return tensor, target


def collate_detection(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Images of different sizes stay a list (the detector pads them itself): ``(images, targets)``."""
    return [image for image, _ in batch], [target for _, target in batch]


class COCODataModule(LightningDataModule):
    """COCO-layout detection data (module doc): ``fit`` trains on ``train_split`` and validates on
    ``val_split``, ``validate`` / ``predict`` read ``val_split``, ``test`` reads ``test_split`` (COCO's
    test2017 has no public annotations: by default the val split).

    Evaluation under DDP: Lightning's distributed sampler pads the last batches with repeated images; the
    module's COCO evaluation gathers all ranks' results and keeps each image once.

    Args:
        root: the folder holding ``<split>/`` and ``annotations/``.
        batch_size: images per device and step (the COCO recipes: 2 per GPU, 16 in all).
        num_workers: loader processes.
        masks: load instance masks (Mask R-CNN); false for box detectors (RetinaNet) saves decoding them.
        flip_prob: probability of a horizontal flip of a training image.
    """

    def __init__(self, root: str, batch_size: int = 2, num_workers: int = 4, masks: bool = True,
                 flip_prob: float = 0.5, train_split: str = "train2017", val_split: str = "val2017",
                 test_split: str = "val2017", pin_memory: bool = True) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"need batch_size >= 1, num_workers >= 0, 0 <= flip_prob <= 1; got batch_size="
                             f"{batch_size}, num_workers={num_workers}, flip_prob={flip_prob}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.masks = bool(masks)
        self.flip_prob = float(flip_prob)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self._read: dict[str, COCOSplit] = {}
        self.datasets: dict[str, COCODetectionDataset] = {}

    # -- the data set ---------------------------------------------------------------------------
    def split(self, role: str) -> COCOSplit:
        """The checked split of ``role`` (train / val / test), read once."""
        name = self.splits[role]
        if name not in self._read:
            self._read[name] = read_coco_split(self.root, name, self.masks)
        return self._read[name]

    @property
    def categories(self) -> list[dict[str, Any]]:
        """The categories (id, name) of the training annotations in label order: label i + 1 is categories[i]."""
        return self.split("train" if self._has_train() else "val").categories

    def _has_train(self) -> bool:
        return annotation_file(self.root, self.splits["train"]).is_file()

    @property
    def num_classes(self) -> int:
        """Categories + 1: torchvision's detectors count the background as class 0."""
        return len(self.categories) + 1

    @property
    def class_names(self) -> list[str]:
        """Name of each label, ``background`` first (len == num_classes)."""
        return ["background", *(str(c.get("name", c["id"])) for c in self.categories)]

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of each label 1..K (index 0 is label 1)."""
        return [int(c["id"]) for c in self.categories]

    def _check_categories(self, role: str) -> None:
        if not self._has_train() or role == "train":
            return
        ours, theirs = self.split("train").categories, self.split(role).categories
        if [c["id"] for c in ours] != [c["id"] for c in theirs]:
            raise DatasetLayoutError(
                f"{annotation_file(self.root, self.splits[role])} declares category ids "
                f"{[c['id'] for c in theirs]} but {annotation_file(self.root, self.splits['train']).name} declares "
                f"{[c['id'] for c in ours]}: the splits must share one category list")

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Check the splits the stage reads, before any batch (the module doc lists the errors)."""
        roles = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["val"]}.get(
            stage or "fit", ["train", "val"])
        for role in roles:
            if role in self.datasets:
                continue
            self._check_categories(role)
            self.datasets[role] = COCODetectionDataset(self.split(role), train=role == "train", masks=self.masks,
                                                       flip_prob=self.flip_prob)

    def _world_size(self) -> int:
        return int(getattr(self.trainer, "world_size", 1)) if self.trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        return resumable_loader(
            dataset, batch_size=self.batch_size, shuffle=True, collate_fn=collate_detection,
            drop_last=len(dataset) >= self.batch_size * self._world_size(), num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def _eval_loader(self, role: str) -> DataLoader:
        return DataLoader(self.datasets[role], batch_size=self.batch_size, shuffle=False,
                          collate_fn=collate_detection, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          generator=torch.Generator())  # its own worker seeds: the training random stream stays

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("val")


class FashionScenesDetection(COCODataModule):
    """The embedded detection demo: scenes of Fashion-MNIST garments (``data/fashion_scenes.py``) written once
    in COCO layout (boxes and instance masks of every garment, 10 categories) under ``root`` (default
    ``~/.cache/glnet_lightning/fashion_scenes/coco``), then read through :class:`COCODataModule` like any COCO
    data. No download: the garments come from the Fashion-MNIST files of the Debian package (or the cache).
    Its classes are known before the tree exists (the CLI links ``num_classes`` first).

    Args:
        num_train / num_val: scenes per split (the val split is also the test split).
        size: side of a scene in pixels.
        max_objects: garments per scene, at most.
        seed: the scenes are a function of it and the other settings (rewritten when they change).
        fashion_mnist: a folder with the Fashion-MNIST IDX files (default: the Debian package, else the download).
    """

    def __init__(self, root: str | None = None, num_train: int = 2000, num_val: int = 200, size: int = 64,
                 max_objects: int = 4, seed: int = 0, fashion_mnist: str | None = None, batch_size: int = 8,
                 num_workers: int = 0, flip_prob: float = 0.5, masks: bool = True) -> None:
        from .fashion_scenes import default_scenes_root

        super().__init__(str(root) if root is not None else str(default_scenes_root("coco")),
                         batch_size=batch_size, num_workers=num_workers, masks=masks, flip_prob=flip_prob)
        self.scene_settings = {"num_train": int(num_train), "num_val": int(num_val), "size": int(size),
                               "max_objects": int(max_objects), "seed": int(seed), "fashion_mnist": fashion_mnist}

    @property
    def categories(self) -> list[dict[str, Any]]:
        from .fashion_scenes import SCENE_CLASSES

        return [{"id": i, "name": name} for i, name in enumerate(SCENE_CLASSES) if i > 0]

    def prepare_data(self) -> None:
        """Write the scenes (once per settings; on one process, Lightning's rule for ``prepare_data``)."""
        from .fashion_scenes import prepare_scenes

        prepare_scenes(self.root, layout="coco", **self.scene_settings)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is None:  # used on its own: nobody called prepare_data
            self.prepare_data()
        super().setup(stage)
        expected = [(c["id"], c["name"]) for c in self.categories]
        for role in self.datasets:
            if [(c["id"], c.get("name")) for c in self.split(role).categories] != expected:
                raise DatasetLayoutError(f"{annotation_file(self.root, self.splits[role])} is not a fashion scenes "
                                         f"tree (other categories): give another --data.root")
