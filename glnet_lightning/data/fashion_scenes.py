"""Fashion scenes: a small segmentation / detection data set made from the Debian Fashion-MNIST, no download.

Why: the dense-prediction demos (issues 25 and 26) must train on a laptop CPU and reach real mIoU / mAP
figures, with nothing to fetch. A scene is a canvas with a non-flat coloured background on which 1..k
Fashion-MNIST garments are pasted at random positions and scales, each tinted with its own colour (so colour
and shape both matter), later garments occluding earlier ones. The visible part of each garment is its
instance mask, so the same scenes give per-pixel labels (background + 10 garment classes) and COCO
instances. Everything is drawn from ``numpy`` generators seeded per scene, so scene ``i`` of a seed is the
same whatever the number of scenes asked for.

The scenes are written in the real ADE20K / COCO layouts (:func:`prepare_scenes`) so the demos read them
through the same data modules as the full-size data sets.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from glnet_lightning.errors import UserError

from .fashion_mnist import (
    CLASS_NAMES,
    FashionMNISTNotFoundError,
    default_cache_dir,
    find_system_fashion_mnist,
    load_fashion_mnist_split,
    locate_fashion_mnist_files,
)

__all__ = [
    "SCENE_CLASSES",
    "Instance",
    "Scene",
    "make_scenes",
    "garment_masks",
    "write_ade20k_layout",
    "write_coco_layout",
    "prepare_scenes",
    "default_scenes_root",
    "ScenesRootError",
]

logger = logging.getLogger(__name__)

#: Per-pixel classes: 0 background, 1..10 the Fashion-MNIST garments (COCO category ids are the same 1..10).
SCENE_CLASSES: tuple[str, ...] = ("background", *CLASS_NAMES)

#: Bumped whenever the drawing changes, so a cached tree made by an older generator is rewritten.
SCENES_VERSION = 1
#: The file in a written tree that records how it was made (written last: its presence means "complete").
STAMP_NAME = "fashion_scenes.json"

#: Scene split -> (Fashion-MNIST split the garments come from, stream number of the per-scene generators).
_SPLITS: dict[str, tuple[str, int]] = {"train": ("train", 0), "val": ("test", 1), "test": ("test", 2)}
_ADE20K_DIRS = {"train": "training", "val": "validation"}
_COCO_DIRS = {"train": "train2017", "val": "val2017"}

_FOREGROUND_THRESHOLD = 10  # Fashion-MNIST pixels above this are garment (the background is 0 with faint specks)
_MAX_HOLE = 10  # enclosed background blobs up to this many pixels (of 28 x 28) are dark texture, not holes
_MAX_SPECK = 3  # foreground blobs up to this many pixels are noise
_MIN_VISIBLE_PIXELS = 12  # an instance smaller than this on the canvas is not worth a label
_PLACEMENT_TRIES = 10


class ScenesRootError(UserError):
    """The scenes root holds something that is not a tree this module wrote: it is never deleted."""


class Instance(NamedTuple):
    """One garment of a scene: its Fashion-MNIST class (0..9) and the part of it that is visible (H x W bool)."""

    category: int
    mask: np.ndarray


@dataclass(eq=False)  # arrays have no single truth value: compare images and masks explicitly
class Scene:
    """A canvas (``image``, H x W x 3 uint8) and its garments, bottom to top; the masks never overlap."""

    image: np.ndarray
    instances: list[Instance] = field(default_factory=list)

    def semantic_mask(self) -> np.ndarray:
        """H x W uint8: 0 background, 1 + category for each garment's visible pixels (indices of SCENE_CLASSES)."""
        semantic = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for category, mask in self.instances:
            semantic[mask] = category + 1
        return semantic


# ------------------------------------------------------------------------------------ garments
def _fashion_mnist_files(fashion_mnist: str | Path | None) -> dict[str, Path]:
    """The four IDX files: from ``fashion_mnist`` if given, else the Debian package, else torchvision's download
    in the per-user cache; one line saying how to get them otherwise."""
    how = ("install the Debian package dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist) or pass "
           "the folder holding the four Fashion-MNIST IDX files")
    if fashion_mnist is None:
        fashion_mnist = find_system_fashion_mnist() or default_cache_dir()
    try:
        return locate_fashion_mnist_files(fashion_mnist)
    except FashionMNISTNotFoundError as exc:
        raise FashionMNISTNotFoundError(f"fashion scenes need Fashion-MNIST: {exc}; {how}") from None


@functools.lru_cache(maxsize=2)
def _garment_split(images_file: Path, labels_file: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's uint8 (N, 28, 28) images and int64 labels, read once per process (train and val both ask)."""
    images, labels = load_fashion_mnist_split({f"{split}_images": images_file, f"{split}_labels": labels_file}, split)
    return images.numpy(), labels.numpy()


def _small_components(region: np.ndarray, max_area: int, touches_border: bool) -> np.ndarray:
    """The 4-connected blobs of ``region`` (N, H, W bool) of at most ``max_area`` pixels.

    With ``touches_border``, the outside of the image counts as part of ``region``, so a blob open to the
    border is never small (holes = background blobs enclosed by the garment). Numpy only (scipy is not a
    dependency): labels spread by neighbour minima and pointer jumping, all images at once.
    """
    padded = np.pad(region, ((0, 0), (1, 1), (1, 1)), constant_values=touches_border)
    count, height, width = padded.shape
    never = height * width  # a label is the index of a pixel of its blob in its image; this one is no pixel
    labels = np.where(padded, np.arange(never, dtype=np.int32).reshape(height, width), never).astype(np.int32)
    active = np.arange(count)  # images whose labels still change
    while active.size:
        before, inside = labels[active], padded[active]
        spread = before.copy()
        np.minimum(spread[:, 1:], before[:, :-1], out=spread[:, 1:])
        np.minimum(spread[:, :-1], before[:, 1:], out=spread[:, :-1])
        np.minimum(spread[:, :, 1:], before[:, :, :-1], out=spread[:, :, 1:])
        np.minimum(spread[:, :, :-1], before[:, :, 1:], out=spread[:, :, :-1])
        spread[~inside] = never
        # jump to the label of the pixel a label names (its blob's smaller label): far fewer rounds
        lookup = np.pad(spread.reshape(len(active), -1), ((0, 0), (0, 1)), constant_values=never)
        spread = np.take_along_axis(lookup, spread.reshape(len(active), -1), axis=1).reshape(spread.shape)
        changed = (spread != before).any(axis=(1, 2))
        labels[active] = spread
        active = active[changed]
    blob = labels.astype(np.int64) + np.arange(count)[:, None, None] * (never + 1)  # unique over all images
    sizes = np.bincount(blob[padded], minlength=count * (never + 1))
    small = padded & (sizes[blob] <= max_area)
    return small[:, 1:-1, 1:-1]


def garment_masks(images: np.ndarray) -> np.ndarray:
    """Foreground masks (N, 28, 28 bool) of Fashion-MNIST images: above a low threshold, without specks,
    small enclosed holes (dark texture) filled; large holes such as a bag's handle stay background."""
    masks = images > _FOREGROUND_THRESHOLD
    masks &= ~_small_components(masks, _MAX_SPECK, touches_border=False)
    masks |= _small_components(~masks, _MAX_HOLE, touches_border=True)
    return masks


# ------------------------------------------------------------------------------------ drawing
def _resize(array: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A non-flat background: a base colour, low-frequency colour blotches, a gradient and fine grain.
    Returns the float H x W x 3 canvas and the base colour (garment tints keep away from it)."""
    base = rng.uniform(30, 225, 3)
    blotches = _resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), size, Image.Resampling.BICUBIC)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * rng.uniform(-60, 60, 3)
    canvas = base + 0.3 * (blotches - 128.0) + ramp + rng.normal(0, 4, (size, size, 3))
    return canvas, base


def _tint(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A garment colour not too close to the background's base colour (the last draw if none is far enough)."""
    for _ in range(_PLACEMENT_TRIES):
        tint = rng.uniform(40, 255, 3)
        if np.linalg.norm(tint - avoid) > 80:
            break
    return tint


def _draw_scene(rng: np.random.Generator, size: int, picks: np.ndarray, images: np.ndarray, masks: np.ndarray,
                labels: np.ndarray, garment_scale: tuple[float, float], min_visible: float) -> Scene:
    """Paste the picked garments bottom to top. A garment is placed only where it leaves every garment (itself
    included, after the image border) at least ``min_visible`` of its area; else it is tried elsewhere, then
    skipped. So every painted pixel belongs to a kept instance and the labels match the image."""
    canvas, base = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)  # index into `placed` of the garment on top, -1 background
    placed: list[int] = []  # Fashion-MNIST index of each kept garment
    needed: list[float] = []  # pixels each kept garment must keep visible
    visible: list[int] = []
    lo, hi = (max(4, round(f * size)) for f in garment_scale)
    for pick in picks:
        scale = int(rng.integers(lo, hi + 1))
        flip = bool(rng.random() < 0.5)
        tint = _tint(rng, base)
        shade = _resize(images[pick], scale, Image.Resampling.BILINEAR) / 255.0
        mask = _resize(masks[pick].astype(np.uint8) * 255, scale, Image.Resampling.BILINEAR) > 127
        if flip:
            shade, mask = shade[:, ::-1], mask[:, ::-1]
        full = int(mask.sum())
        must_keep = max(min_visible * full, _MIN_VISIBLE_PIXELS)
        # the first garment lies wholly inside the canvas (so it is always kept, unless it is smaller than
        # _MIN_VISIBLE_PIXELS: only possible on tiny canvases); later ones may be cut by the border
        margin = 0 if not placed else scale // 4
        for _ in range(_PLACEMENT_TRIES):
            top, left = (int(v) for v in rng.integers(-margin, size - scale + margin + 1, 2))
            rows = slice(max(top, 0), min(top + scale, size))
            cols = slice(max(left, 0), min(left + scale, size))
            inside = mask[rows.start - top: rows.stop - top, cols.start - left: cols.stop - left]
            covered = owner[rows, cols][inside]
            lost = np.bincount(covered[covered >= 0], minlength=len(placed))
            if inside.sum() >= must_keep and all(v - c >= n for v, c, n in zip(visible, lost, needed)):
                break
        else:
            continue
        owner[rows, cols][inside] = len(placed)
        local = shade[rows.start - top: rows.stop - top, cols.start - left: cols.stop - left][inside]
        canvas[rows, cols][inside] = tint * (0.3 + 0.7 * local[:, None])
        visible = [v - c for v, c in zip(visible, lost)] + [int(inside.sum())]
        placed.append(int(pick))
        needed.append(must_keep)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image, [Instance(int(labels[pick]), owner == j) for j, pick in enumerate(placed)])


def make_scenes(
    num: int,
    *,
    size: int = 64,
    seed: int = 0,
    split: str = "train",
    max_objects: int = 4,
    garment_scale: tuple[float, float] = (0.3, 0.65),
    min_visible: float = 0.3,
    fashion_mnist: str | Path | None = None,
) -> list[Scene]:
    """``num`` scenes of ``size`` x ``size`` px with 1..``max_objects`` garments each (a garment with no room to stay
    ``min_visible`` is left out), deterministic from ``seed``.

    Garments come from the Fashion-MNIST train split for ``split="train"`` and from its test split for "val" and
    "test" (different streams), so validation garments were never seen in training. A garment's side is
    ``garment_scale`` (fractions of ``size``); an occluded garment keeps at least ``min_visible`` of its area.
    ``fashion_mnist``: a folder with the IDX files (default: the Debian package, else the per-user download).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    if num < 0 or size < 8 or max_objects < 1 or not 0 < garment_scale[0] <= garment_scale[1] <= 1 \
            or not 0 <= min_visible <= 1:
        raise ValueError(f"need num >= 0, size >= 8, max_objects >= 1, 0 < garment_scale[0] <= garment_scale[1] <= 1, "
                         f"0 <= min_visible <= 1; got num={num}, size={size}, max_objects={max_objects}, "
                         f"garment_scale={garment_scale}, min_visible={min_visible}")
    source, stream = _SPLITS[split]
    files = _fashion_mnist_files(fashion_mnist)
    images, labels = _garment_split(files[f"{source}_images"], files[f"{source}_labels"], source)
    rngs = [np.random.default_rng([seed, stream, i]) for i in range(num)]
    picks = [rng.integers(0, len(images), int(rng.integers(1, max_objects + 1))) for rng in rngs]
    used = np.unique(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)
    masks = np.zeros(images.shape, dtype=bool)
    masks[used] = garment_masks(images[used])  # only the garments drawn: cleaning all 60k would take seconds
    return [_draw_scene(rng, size, p, images, masks, labels, tuple(garment_scale), min_visible)
            for rng, p in zip(rngs, picks)]


# ------------------------------------------------------------------------------------ layouts
def _check_splits(scenes_by_split: Mapping[str, Sequence[Scene]], dirs: Mapping[str, str]) -> None:
    unknown = sorted(set(scenes_by_split) - set(dirs))
    if unknown:
        raise ValueError(f"scene splits must be among {sorted(dirs)}, got {unknown}")


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, quality=95, subsampling=0)  # 4:4:4: sharp colour edges on small garments


def write_ade20k_layout(root: str | Path, scenes_by_split: Mapping[str, Sequence[Scene]]) -> Path:
    """Write ``root/images/{training,validation}/ADE_*.jpg`` and ``root/annotations/.../ADE_*.png`` (``root`` is the
    ``ADEChallengeData2016`` folder). Annotation values are SCENE_CLASSES + 1: 0 is ADE20K's "other", unused here,
    so ``reduce_zero_label`` maps them back to 0 background, 1..10 garments."""
    _check_splits(scenes_by_split, _ADE20K_DIRS)
    root = Path(root)
    for split, scenes in scenes_by_split.items():
        images, annotations = root / "images" / _ADE20K_DIRS[split], root / "annotations" / _ADE20K_DIRS[split]
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(scenes, 1):
            stem = f"ADE_{split}_{i:08d}"
            _save_jpeg(scene.image, images / f"{stem}.jpg")
            Image.fromarray(scene.semantic_mask() + 1, mode="L").save(annotations / f"{stem}.png")
    return root


def write_coco_layout(root: str | Path, scenes_by_split: Mapping[str, Sequence[Scene]]) -> Path:
    """Write ``root/{train,val}2017/*.jpg`` and ``root/annotations/instances_{train,val}2017.json``: categories
    1..10 (CLASS_NAMES), one annotation per visible garment with its mask as compressed RLE (exact), its tight
    ``bbox`` [x, y, w, h], ``area`` (mask pixels) and ``iscrowd`` 0."""
    from pycocotools import mask as mask_utils

    _check_splits(scenes_by_split, _COCO_DIRS)
    root = Path(root)
    categories = [{"id": i + 1, "name": name, "supercategory": "garment"} for i, name in enumerate(CLASS_NAMES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, scenes in scenes_by_split.items():
        folder = root / _COCO_DIRS[split]
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id, scene in enumerate(scenes, 1):
            file_name = f"{image_id:012d}.jpg"
            _save_jpeg(scene.image, folder / file_name)
            height, width = scene.image.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for category, mask in scene.instances:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                })
        document = {"info": {"description": f"fashion scenes ({split}) made from Fashion-MNIST"}, "licenses": [],
                    "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{_COCO_DIRS[split]}.json").write_text(json.dumps(document))
    return root


_WRITERS = {"ade20k": write_ade20k_layout, "coco": write_coco_layout}


def default_scenes_root(layout: str) -> Path:
    """Where the demo data modules keep their scenes when not told: next to the Fashion-MNIST download cache."""
    return default_cache_dir().parent / "fashion_scenes" / layout


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def prepare_scenes(
    root: str | Path,
    layout: str,
    *,
    num_train: int = 2000,
    num_val: int = 500,
    size: int = 64,
    seed: int = 0,
    max_objects: int = 4,
    garment_scale: tuple[float, float] = (0.3, 0.65),
    min_visible: float = 0.3,
    fashion_mnist: str | Path | None = None,
) -> Path:
    """Write the scenes' train and val splits under ``root`` in ``layout`` ("ade20k" or "coco") once.

    A stamp file records the settings; a tree with the same stamp is left alone, one with other settings is
    rewritten. The tree is written into a temporary folder next to ``root`` and renamed into place, so a crash
    leaves either the old tree or the new one, never half of one. A non-empty ``root`` without a stamp is not
    ours: :class:`ScenesRootError`, nothing deleted.
    """
    if layout not in _WRITERS:
        raise ValueError(f"layout must be one of {sorted(_WRITERS)}, got {layout!r}")
    root = Path(root).expanduser()
    settings = {"version": SCENES_VERSION, "layout": layout, "num_train": int(num_train), "num_val": int(num_val),
                "size": int(size), "seed": int(seed), "max_objects": int(max_objects),
                "garment_scale": [float(v) for v in garment_scale], "min_visible": float(min_visible)}
    stamp = _read_stamp(root)
    if stamp == settings:
        return root
    if stamp is None and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ScenesRootError(f"{root} exists and is not a fashion scenes tree (no {STAMP_NAME}): give another "
                              "root or delete it")
    started = time.perf_counter()
    options = dict(size=size, seed=seed, max_objects=max_objects, garment_scale=tuple(garment_scale),
                   min_visible=min_visible, fashion_mnist=fashion_mnist)
    scenes = {"train": make_scenes(num_train, split="train", **options),
              "val": make_scenes(num_val, split="val", **options)}
    root.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{root.name}.writing-", dir=root.parent))
    old = root.parent / f"{fresh.name.replace('.writing-', '.old-')}"
    try:
        _WRITERS[layout](fresh, scenes)
        (fresh / STAMP_NAME).write_text(json.dumps(settings, indent=1) + "\n")
        if root.exists():
            os.replace(root, old)  # ours (stamped) or empty: moved aside, then removed
        os.replace(fresh, root)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("wrote %d + %d fashion scenes (%s layout, %d px) to %s in %.1f s", num_train, num_val, layout, size,
                root, time.perf_counter() - started)
    return root
