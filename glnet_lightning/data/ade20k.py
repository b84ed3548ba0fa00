"""ADE20K (``ADEChallengeData2016``) for semantic segmentation, and the Fashion-scenes demo read the same way.

Why this shape: it is the data half of the paper's ADE20K recipes as mmseg runs them (docs/design.md,
section 7): training images resized by a random ratio 0.5-2.0 of (2048, 512) keeping their aspect, a random
512 crop in which no class covers more than 75 % (mmseg's ``cat_max_ratio``), a flip and a photometric
distortion, image and mask moved together by ``torchvision.transforms.v2`` (the mask as a
``tv_tensors.Mask``, resized nearest); validation images resized to (2048, 512) keeping the ratio and scored
against their annotation at the original size, as mmseg scores them. ``reduce_zero_label`` drops ADE20K's
"other" (0) into the ignore index 255 and shifts the 150 classes down to 0..149.

The tree is checked in :meth:`ADE20KDataModule.setup`, before any training step: a missing folder, an empty
split, an image without its annotation (or the reverse), an annotation of another size than its image, or a
label value above the classes each stop with one line naming the file (:class:`DatasetLayoutError`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .image_dataset import load_rgb
from .image_folder import IMG_EXTENSIONS, DatasetLayoutError
from .resumable import resumable_loader

__all__ = ["ADE20K_CLASSES", "IGNORE_INDEX", "ADE20KDataModule", "FashionScenesSegmentation", "SegmentationDataset",
           "KeepRatioResize", "CatMaxRatioCrop", "PadTo", "pad_collate", "scan_split"]

#: Label of pixels that count for nothing (loss and metrics): ADE20K's "other" after ``reduce_zero_label``.
IGNORE_INDEX = 255

#: The 150 classes of the ADE20K scene-parsing benchmark, in label order (1..150 in the annotations).
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)

#: ADE20K's split folders under ``images/`` and ``annotations/``.
SPLITS = {"train": "training", "val": "validation"}


# ------------------------------------------------------------------------------------ the tree
@dataclass(frozen=True)
class SegmentationSample:
    image: str
    annotation: str


def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, str]:
    """``stem -> file name`` of the visible files of ``folder`` with one of ``extensions``."""
    with os.scandir(folder) as entries:
        return {os.path.splitext(e.name)[0]: e.name for e in entries
                if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(extensions)}


def _require_dir(path: Path, root: Path) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"missing folder {path}: an ADE20K tree holds images/{{training,validation}}/*.jpg "
                                 f"and annotations/{{training,validation}}/*.png under {root}")
    return path


def read_labels(path: str, image_size: tuple[int, int], num_classes: int, reduce_zero_label: bool) -> np.ndarray:
    """The annotation at ``path`` as an (H, W) uint8 array of training labels (0..num_classes-1, 255 ignored),
    checked: one channel, the size of its image (``image_size`` = (width, height)), no value above the classes."""
    try:
        with Image.open(path) as annotation:
            if annotation.mode not in ("L", "P", "I;16", "I"):
                raise DatasetLayoutError(f"annotation {path} is a {annotation.mode} image: it must hold one class "
                                         f"index per pixel (a grayscale or palette PNG)")
            if annotation.size != tuple(image_size):
                raise DatasetLayoutError(f"annotation {path} is {annotation.size[0]}x{annotation.size[1]} but its "
                                         f"image is {image_size[0]}x{image_size[1]}")
            labels = np.asarray(annotation)
    except DatasetLayoutError:
        raise
    except Exception as exc:  # PIL raises many types for a broken file
        raise DatasetLayoutError(f"cannot read annotation {path}: {type(exc).__name__}: {exc}") from None
    highest = num_classes if reduce_zero_label else num_classes - 1
    if labels.dtype != np.uint8 and labels.size and labels.min() < 0:
        raise DatasetLayoutError(f"annotation {path} has negative label value {int(labels.min())}")
    values = np.flatnonzero(np.bincount(labels.ravel()))  # (bincount: several times faster than np.unique)
    bad = values[(values > highest) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DatasetLayoutError(f"annotation {path} has label value {int(bad[0])}, above the {num_classes} classes "
                                 f"(values 0..{highest}, {IGNORE_INDEX} ignored)")
    labels = labels.astype(np.uint8)
    if reduce_zero_label:  # 0 ("other") -> ignored, the classes 1..N -> 0..N-1
        labels = np.where(labels == 0, IGNORE_INDEX, np.where(labels == IGNORE_INDEX, IGNORE_INDEX, labels - 1))
        labels = labels.astype(np.uint8)
    return labels


def _image_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as exc:
        raise DatasetLayoutError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def scan_split(root: str | Path, split: str, num_classes: int, reduce_zero_label: bool = True,
               check_labels: bool = True, workers: int = 4) -> list[SegmentationSample]:
    """The (image, annotation) pairs of ``split`` (``train`` / ``val``) under an ADE20K ``root``, checked.

    Every pair's sizes are compared from the file headers; with ``check_labels`` every annotation is also
    decoded (``workers`` threads) so that a label above the classes stops the run now, not hours into it.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist or is not a folder")
    folder = SPLITS[split]
    images_dir = _require_dir(root / "images" / folder, root)
    annotations_dir = _require_dir(root / "annotations" / folder, root)
    images, annotations = _files(images_dir, IMG_EXTENSIONS), _files(annotations_dir, (".png",))
    if not images:
        raise DatasetLayoutError(f"no images in {images_dir} (the {split} split is empty)")
    without = sorted(set(images) - set(annotations))
    if without:
        more = f" (and {len(without) - 1} more)" if len(without) > 1 else ""
        raise DatasetLayoutError(f"image {images_dir / images[without[0]]} has no annotation "
                                 f"{annotations_dir / without[0]}.png{more}")
    orphans = sorted(set(annotations) - set(images))
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DatasetLayoutError(f"annotation {annotations_dir / annotations[orphans[0]]} has no image in "
                                 f"{images_dir}{more}")
    samples = [SegmentationSample(str(images_dir / images[s]), str(annotations_dir / annotations[s]))
               for s in sorted(images)]

    def check(sample: SegmentationSample) -> None:
        size = _image_size(sample.image)
        if check_labels:
            read_labels(sample.annotation, size, num_classes, reduce_zero_label)
            return
        with Image.open(sample.annotation) as annotation:
            if annotation.size != size:
                raise DatasetLayoutError(f"annotation {sample.annotation} is {annotation.size[0]}x"
                                         f"{annotation.size[1]} but its image is {size[0]}x{size[1]}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(check, samples):  # the first bad file (in file order) raises
            pass
    return samples


# ------------------------------------------------------------------------------------ joint transforms
def keep_ratio_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size whose long side is at most ``max(scale)`` and short side at
    most ``min(scale)``, as (height, width)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class KeepRatioResize(v2.Transform):
    """Resize image and mask to :func:`keep_ratio_size` of ``scale`` times a ratio drawn from ``ratio_range``
    (fixed ``scale`` when None); the mask nearest, the image bilinear."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float] | None = None) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = TF.get_size(next(x for x in flat_inputs if isinstance(x, tv_tensors.Image)))
        ratio = 1.0
        if self.ratio_range is not None:
            low, high = self.ratio_range
            ratio = low + (high - low) * float(torch.rand(()))
        return {"size": keep_ratio_size(height, width, [s * ratio for s in self.scale])}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, list(params["size"]), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


class CatMaxRatioCrop(v2.Transform):
    """A random ``size`` crop (the whole side when the image is smaller) in which no class takes more than
    ``cat_max_ratio`` of the labelled pixels, tried up to 10 times as mmseg's ``RandomCrop``."""

    def __init__(self, size: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = int(size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index

    def _random_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        top = int(torch.randint(0, max(height - self.size, 0) + 1, ()))
        left = int(torch.randint(0, max(width - self.size, 0) + 1, ()))
        return top, left, min(self.size, height), min(self.size, width)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        mask = next(x for x in flat_inputs if isinstance(x, tv_tensors.Mask))
        height, width = mask.shape[-2:]
        box = self._random_box(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                top, left, h, w = box
                counts = _label_counts(mask[..., top:top + h, left:left + w], self.ignore_index)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._random_box(height, width)
        return {"box": box}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.crop(inpt, *params["box"])


def _label_counts(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixels per class present in ``labels``, ignored pixels left out."""
    values, counts = torch.unique(labels, return_counts=True)
    return counts[values != ignore_index]


class PadTo(v2.Transform):
    """Pad right and bottom up to ``size`` x ``size``: images with 0 (the mean colour once normalised), masks
    with the ignore index, as mmseg's data preprocessor pads crops smaller than the crop size."""

    def __init__(self, size: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = int(size)
        self.ignore_index = ignore_index

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        padding = [0, 0, max(self.size - width, 0), max(self.size - height, 0)]
        if not any(padding):
            return inpt
        return TF.pad(inpt, padding, fill=self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0)


def photometric_distortion() -> v2.Compose:
    """mmseg's ``PhotoMetricDistortion`` in torchvision ops: brightness +-32/255 (as a factor), contrast and
    saturation 0.5-1.5, hue +-18 of OpenCV's 180 steps, each with probability 0.5 (image only)."""
    return v2.Compose([v2.RandomApply([v2.ColorJitter(brightness=32 / 255)], p=0.5),
                       v2.RandomApply([v2.ColorJitter(contrast=(0.5, 1.5))], p=0.5),
                       v2.RandomApply([v2.ColorJitter(saturation=(0.5, 1.5))], p=0.5),
                       v2.RandomApply([v2.ColorJitter(hue=0.1)], p=0.5)])


# ------------------------------------------------------------------------------------ samples and batches
class SegmentationDataset(Dataset):
    """``{"image", "mask"}`` samples of :func:`scan_split` pairs; ``train`` applies ``transform`` to both, else
    only the image is transformed, the mask stays at its original size (what the metric is computed on) and
    ``name`` is the image file's stem (what ``glnet predict`` names its masks by)."""

    def __init__(self, samples: Sequence[SegmentationSample], transform: v2.Transform, num_classes: int,
                 reduce_zero_label: bool = True, train: bool = True) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        rgb = load_rgb(sample.image)  # grayscale and CMYK files become RGB; a broken file is named
        labels = read_labels(sample.annotation, rgb.size, self.num_classes, self.reduce_zero_label)
        image = tv_tensors.Image(TF.pil_to_tensor(rgb))
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        if self.train:
            image, mask = self.transform(image, mask)
            return {"image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor).long()}
        image = self.transform(image)
        return {"image": image.as_subclass(torch.Tensor), "mask": mask.as_subclass(torch.Tensor).long(),
                "name": Path(sample.image).stem}


def pad_collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch samples of different sizes: images padded with 0 and masks with the ignore index to the largest
    in the batch; ``image_size`` and ``mask_size`` (B, 2) say which part of each is real; ``name``: the image
    files' stems (evaluation samples)."""
    images = [s["image"] for s in samples]
    masks = [s["mask"] for s in samples]
    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    mask_h, mask_w = max(m.shape[-2] for m in masks), max(m.shape[-1] for m in masks)
    batch_images = images[0].new_zeros(len(images), images[0].shape[0], height, width)
    batch_masks = masks[0].new_full((len(masks), mask_h, mask_w), IGNORE_INDEX)
    for i, (image, mask) in enumerate(zip(images, masks)):
        batch_images[i, :, :image.shape[-2], :image.shape[-1]] = image
        batch_masks[i, :mask.shape[-2], :mask.shape[-1]] = mask
    batch = {"image": batch_images, "mask": batch_masks,
             "image_size": torch.tensor([list(i.shape[-2:]) for i in images]),
             "mask_size": torch.tensor([list(m.shape[-2:]) for m in masks])}
    if all("name" in s for s in samples):
        batch["name"] = [s["name"] for s in samples]
    return batch


# ------------------------------------------------------------------------------------ the data module
class ADE20KDataModule(LightningDataModule):
    """``root/images/{training,validation}/*.jpg`` with ``root/annotations/{training,validation}/*.png``.

    Validation, test and predict all read ``validation/`` (ADE20K publishes no test annotations), one whole
    image per sample, in batches of ``val_batch_size`` (padded, see :func:`pad_collate`).

    Args:
        root: the ``ADEChallengeData2016`` folder.
        crop_size: side of the square training crops (512 in the paper's recipes).
        scale: (long, short) side limits of the keep-ratio resize: (2048, 512) as mmseg; validation images
            are resized to it, training images to it times a ratio from ``ratio_range``.
        ratio_range: training scale jitter (0.5-2.0).
        cat_max_ratio: the most one class may cover of a training crop (mmseg: 0.75; 1 turns it off).
        batch_size: training images per device and step (2 x 8 GPUs = 16 in the paper).
        val_batch_size: validation images per device and step (1, as mmseg).
        num_workers: loader processes (also the threads that check the annotations in :meth:`setup`).
        reduce_zero_label: ADE20K's 0 is "other": ignored, classes 1..150 become 0..149.
        check_labels: decode every annotation in :meth:`setup` to check its values before training (about 2 ms
            an annotation on one CPU core: under a minute for ADE20K's 22k); false checks the sizes only (from
            the file headers) and leaves the values to the loader, which checks each file it reads either way.
    """

    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
    #: Class names in label order (after ``reduce_zero_label``).
    classes: tuple[str, ...] = ADE20K_CLASSES

    def __init__(
        self,
        root: str,
        crop_size: int = 512,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        batch_size: int = 2,
        val_batch_size: int = 1,
        num_workers: int = 4,
        reduce_zero_label: bool = True,
        check_labels: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if crop_size < 1 or batch_size < 1 or val_batch_size < 1 or num_workers < 0 or min(scale) < 1:
            raise ValueError(f"need crop_size, batch_size, val_batch_size and the scale >= 1, num_workers >= 0; got "
                             f"crop_size={crop_size}, batch_size={batch_size}, val_batch_size={val_batch_size}, "
                             f"scale={scale}, num_workers={num_workers}")
        if not 0 < ratio_range[0] <= ratio_range[1] or not 0 < cat_max_ratio <= 1:
            raise ValueError(f"need 0 < ratio_range[0] <= ratio_range[1] and 0 < cat_max_ratio <= 1, got "
                             f"ratio_range={ratio_range}, cat_max_ratio={cat_max_ratio}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.crop_size = int(crop_size)
        self.scale = tuple(int(s) for s in scale)
        self.ratio_range = tuple(float(r) for r in ratio_range)
        self.cat_max_ratio = float(cat_max_ratio)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.check_labels = bool(check_labels)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_transform(self) -> v2.Compose:
        return v2.Compose([
            KeepRatioResize(self.scale, self.ratio_range),
            CatMaxRatioCrop(self.crop_size, self.cat_max_ratio),
            v2.RandomHorizontalFlip(0.5),
            photometric_distortion(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
            PadTo(self.crop_size),
        ])

    def eval_transform(self) -> v2.Compose:
        return v2.Compose([KeepRatioResize(self.scale), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(self.mean, self.std)])

    def _scan(self, split: str) -> list[SegmentationSample]:
        return scan_split(self.root, split, self.num_classes, self.reduce_zero_label, self.check_labels,
                          workers=max(1, self.num_workers))

    def setup(self, stage: str | None = None) -> None:
        """Check the tree (both splits for fit, ``validation/`` otherwise), then build the datasets."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = SegmentationDataset(self._scan("train"), self.train_transform(), self.num_classes,
                                                 self.reduce_zero_label, train=True)
        if self.val_set is None:
            self.val_set = SegmentationDataset(self._scan("val"), self.eval_transform(), self.num_classes,
                                               self.reduce_zero_label, train=False)

    def train_dataloader(self):
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before requesting the train dataloader")
        world_size = int(getattr(self.trainer, "world_size", 1)) if self.trainer is not None else 1
        return resumable_loader(  # a mid-epoch checkpoint keeps its position and augmentation state
            self.train_set, batch_size=self.batch_size, shuffle=True,
            drop_last=len(self.train_set) >= self.batch_size * world_size, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.persistent_workers, collate_fn=pad_collate)

    def _eval_loader(self, stage: str) -> DataLoader:
        if self.val_set is None:
            raise RuntimeError(f"call setup({stage!r}) before requesting its dataloader")
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.persistent_workers,
                          collate_fn=pad_collate, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validate")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


class FashionScenesSegmentation(ADE20KDataModule):
    """The segmentation demo: Fashion-MNIST garments pasted on coloured canvases (``data/fashion_scenes.py``),
    written once in the ADE20K layout (``prepare_data``, no download) and read through :class:`ADE20KDataModule`.

    Classes: background and the 10 garments (annotation values 1..11, ``reduce_zero_label`` as ADE20K).

    Args:
        root: where the scenes are kept (default: ``~/.cache/glnet_lightning/fashion_scenes/ade20k``); rewritten
            when the scene settings change.
        num_train / num_val / size / seed / max_objects: the scenes (see ``fashion_scenes.make_scenes``).
        fashion_mnist: a folder with the Fashion-MNIST IDX files (default: the Debian package, else the download).
        crop_size / scale / ...: as :class:`ADE20KDataModule`, scaled down to the scenes' size.
    """

    def __init__(
        self,
        root: str | None = None,
        num_train: int = 2000,
        num_val: int = 500,
        size: int = 64,
        seed: int = 0,
        max_objects: int = 4,
        fashion_mnist: str | None = None,
        crop_size: int = 64,
        scale: tuple[int, int] = (256, 64),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        batch_size: int = 16,
        val_batch_size: int = 16,
        num_workers: int = 2,
        check_labels: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ) -> None:
        from .fashion_scenes import SCENE_CLASSES, default_scenes_root

        self.classes = tuple(SCENE_CLASSES)
        super().__init__(str(root) if root is not None else str(default_scenes_root("ade20k")), crop_size=crop_size,
                         scale=scale, ratio_range=ratio_range, cat_max_ratio=cat_max_ratio, batch_size=batch_size,
                         val_batch_size=val_batch_size, num_workers=num_workers, reduce_zero_label=True,
                         check_labels=check_labels, pin_memory=pin_memory, persistent_workers=persistent_workers)
        self.scene_settings = dict(num_train=num_train, num_val=num_val, size=size, seed=seed, max_objects=max_objects,
                                   fashion_mnist=fashion_mnist)

    def prepare_data(self) -> None:
        """Write the scenes (once; a tree with the same settings is kept)."""
        from .fashion_scenes import prepare_scenes

        prepare_scenes(self.root, "ade20k", **self.scene_settings)
