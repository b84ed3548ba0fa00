"""Token labeling's data: LV-ViT's label map of each training image, loaded beside it and moved with it.

A label map ``DIR/<class>/<image stem>.pt`` is a (2, k, S, S) tensor (top-k scores, top-k class
indices) over the whole image; the network sees a crop of it, perhaps flipped and then rotated,
sheared or shifted by RandAugment. The targets (:func:`glnet_lightning.token_labeling.token_label_targets`)
cut the crop out of the map with RoIAlign over a box, so every step that moves pixels moves the box or
the map the same way: the crop is recorded as the box (a third row, docs/design.md section 6), a flip
mirrors map and box, and a geometric RandAugment operation resamples the map with the parameters
timm drew for the image. Photometric steps and random erasing touch the image only.

Why the image steps stay timm's own objects (their random draws noted, not repeated): an image is
then augmented exactly as without token labels, from the same random stream.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data.auto_augment import AugMixAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybePILToTensor, MaybeToTensor, RandomResizedCropAndInterpolation
from torchvision import transforms as tv
from torchvision.transforms import functional as tvf

from glnet_lightning.token_labeling import CROP_BOX, IMAGE_LABEL, TokenLabelError

from .augment_compat import augment_ops
from .image_dataset import ImageFolderDataset
from .image_folder import SampleList

__all__ = ["TokenLabelFileError", "LabelMapTrainTransform", "TokenLabelDataset", "check_label_files",
           "label_file", "load_label_map"]

LABEL_SUFFIX = ".pt"

#: RandAugment / AutoAugment operations that move pixels: the label map follows them.
GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel",
                           "TranslateYRel"})
#: Operations that change pixel values only: the label map ignores them.
PHOTOMETRIC_OPS = frozenset({
    "AutoContrast", "Equalize", "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize",
    "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Contrast", "ContrastIncreasing",
    "Brightness", "BrightnessIncreasing", "Sharpness", "SharpnessIncreasing", "Desaturate", "GaussianBlur",
    "GaussianBlurRand"})
#: Steps of timm's training transform that act on pixel values (or erase them) and leave the map alone.
IMAGE_ONLY_STEPS = (tv.ColorJitter, tv.RandomGrayscale, tv.GaussianBlur, tv.ToTensor, tv.Normalize,
                    MaybeToTensor, MaybePILToTensor, RandomErasing)


class TokenLabelFileError(TokenLabelError):
    """A label file that is missing or is not an LV-ViT label map; the message names the image and the file."""


# -- files -------------------------------------------------------------------------------------------
def label_file(label_root: Path, relative_image: str) -> Path:
    """``label_root/<class>/<image stem>.pt`` for ``<class>/<image file>`` (a path relative to its split)."""
    return Path(label_root) / (os.path.splitext(relative_image)[0] + LABEL_SUFFIX)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load_label_map(path: Path, image: str, shape: torch.Size | None = None) -> torch.Tensor:
    """The (2, k, S, S) float32 label map in ``path`` for ``image``; ``shape``: the shape every map must have.

    Raises :class:`TokenLabelFileError` naming both files when it is missing, unreadable or malformed.
    """
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TokenLabelFileError(f"no token-label file for image {image}: expected {path}") from None
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors of many kinds for bad bytes
        raise TokenLabelFileError(f"cannot read token-label file {path} (for image {image}): "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from exc
    wanted = "(2, k, S, S)" if shape is None else str(tuple(shape))
    if not isinstance(value, torch.Tensor):
        got = type(value).__name__
    elif (value.dim() != 4 or value.shape[0] != 2 or value.shape[2] != value.shape[3]
          or not value.is_floating_point() or (shape is not None and value.shape != shape)):
        got = f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    else:
        return value.float()
    raise TokenLabelFileError(f"token-label file {path} (for image {image}) is not an LV-ViT label map: expected "
                              f"a float tensor of shape {wanted} (top-k scores, top-k class indices), got {got}")


def _names_in(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def check_label_files(label_root: Path, samples: SampleList, num_classes: int) -> torch.Size:
    """Before training: every image of ``samples`` has its label file, and the first one is a usable map.

    Returns that map's shape, which every other map must share (they are batched). One directory
    listing per class folder, so this costs seconds for ImageNet's 1.28 M images, not a file open each.
    """
    label_root = Path(label_root)
    if not label_root.is_dir():
        raise TokenLabelFileError(f"token_labels {label_root} is not a directory: expected LV-ViT's label maps "
                                  f"there as <class>/<image stem>{LABEL_SUFFIX}")
    listed: dict[str, set[str]] = {}
    missing: list[int] = []
    for index in range(len(samples)):
        folder, name = os.path.split(os.path.splitext(os.fsdecode(samples.paths[index]))[0] + LABEL_SUFFIX)
        if folder not in listed:
            listed[folder] = _names_in(label_root / folder)
        if name not in listed[folder]:
            missing.append(index)
    if missing:
        first = missing[0]
        raise TokenLabelFileError(
            f"{len(missing)} of {len(samples)} training images have no token-label file in {label_root} "
            f"(first: {samples.path(first)}, expected {label_file(label_root, os.fsdecode(samples.paths[first]))})")
    image = samples.path(0)
    path = label_file(label_root, os.fsdecode(samples.paths[0]))
    label_map = load_label_map(path, image)
    side = label_map.shape[-1]
    if side <= IMAGE_LABEL:
        raise TokenLabelFileError(f"token-label file {path} (for image {image}) is a {side} x {side} map: the crop "
                                  f"box and class are stored in its last row, which needs S >= {IMAGE_LABEL + 1}")
    classes = label_map[1]
    if bool((classes != classes.round()).any()) or int(classes.min()) < 0 or int(classes.max()) >= num_classes:
        raise TokenLabelFileError(
            f"token-label file {path} (for image {image}) names classes {int(classes.min())}..{int(classes.max())} "
            f"but the training tree has {num_classes}: the maps must index this tree's sorted class folders")
    return label_map.shape


# -- the transform ----------------------------------------------------------------------------------
class _Noted:
    """``fn`` unchanged, except that each call's arguments are appended to ``log`` under ``tag``.

    Set on an instance of a timm transform in place of the function it draws or applies with, so the
    values timm drew for the image can be applied to the label map (a plain class: it pickles into
    DataLoader workers together with the log it shares with the transform)."""

    def __init__(self, tag: str, fn: Callable[..., Any], log: list) -> None:
        self.tag, self.fn, self.log = tag, fn, log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.fn(*args, **kwargs)
        self.log.append((self.tag, args, result))
        return result


def _inverse_affine(name: str, args: tuple, size: tuple[int, int]) -> torch.Tensor:
    """The 3x3 map from output to input pixel coordinates of timm's op ``name`` (PIL's affine convention)."""
    width, height = size
    (value,) = args
    matrix = torch.eye(3, dtype=torch.float64)
    if name == "Rotate":  # PIL rotates counter-clockwise about the image centre
        angle = -math.radians(value)
        cos, sin = math.cos(angle), math.sin(angle)
        cx, cy = width / 2, height / 2
        matrix[:2] = torch.tensor([[cos, sin, cx - cos * cx - sin * cy], [-sin, cos, cy + sin * cx - cos * cy]])
    elif name == "ShearX":
        matrix[0, 1] = value
    elif name == "ShearY":
        matrix[1, 0] = value
    elif name in ("TranslateX", "TranslateXRel"):
        matrix[0, 2] = value * width if name.endswith("Rel") else value
    else:  # TranslateY, TranslateYRel
        matrix[1, 2] = value * height if name.endswith("Rel") else value
    return matrix


def _move_label_map(label_map: torch.Tensor, box: list[float], inverses: list[torch.Tensor],
                    size: tuple[int, int]) -> torch.Tensor:
    """The full-image map resampled so that its crop box shows what the moved crop shows.

    ``inverses``: per operation, in the order applied, the map from its output to its input pixels of
    the crop (``size``). Each map cell takes the nearest source cell (the map holds class indices, which
    do not interpolate). A cell whose point leaves the crop at any operation shows the fill colour in
    the image (later operations move the fill like any pixel), so it gets zero scores: no class there.
    """
    side = label_map.shape[-1]
    width, height = size
    x, y, w, h = box
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    frac_y, frac_x = torch.meshgrid(centres, centres, indexing="ij")
    src_x, src_y = (frac_x - x) / w * width, (frac_y - y) / h * height
    inside = torch.ones_like(src_x, dtype=torch.bool)
    for inverse in reversed(inverses):  # the last operation's output back to the first one's input
        src_x, src_y = (inverse[0, 0] * src_x + inverse[0, 1] * src_y + inverse[0, 2],
                        inverse[1, 0] * src_x + inverse[1, 1] * src_y + inverse[1, 2])
        inside &= (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    col = ((x + src_x / width * w) * side).floor().long().clamp_(0, side - 1)
    row = ((y + src_y / height * h) * side).floor().long().clamp_(0, side - 1)
    moved = label_map[:, :, row, col]
    moved[0] *= inside.to(moved.dtype)
    return moved


class LabelMapTrainTransform:
    """timm's training transform (a ``Compose``) applied to an image and its label map together.

    ``(image, label map (2, k, S, S))`` -> ``(image tensor, (3, k, S, S))``: the third row holds the crop
    box at ``[0, 0, :4]`` (x, y, w, h, fractions of the image after flips); ``[0, 0, 5]`` is left for the
    dataset's class index. A step whose effect on the map is unknown is refused when built. Works on
    its own copy of ``transform``, whose steps it instruments.
    """

    def __init__(self, transform: Any) -> None:
        self._log: list[tuple[str, tuple, Any]] = []
        self.steps: list[tuple[str, Any]] = [self._classify(step) for step in copy.deepcopy(transform).transforms]

    def _classify(self, step: Any) -> tuple[str, Any]:
        if isinstance(step, RandomResizedCropAndInterpolation):
            step.get_params = _Noted("crop", type(step).get_params, self._log)
            return "crop", step
        if isinstance(step, tv.RandomHorizontalFlip):
            return "hflip", step
        if isinstance(step, tv.RandomVerticalFlip):
            return "vflip", step
        if isinstance(step, AugMixAugment):
            raise TokenLabelError("auto_augment 'augmix...' blends several augmented copies of an image, which no "
                                  "single label map can follow: use a RandAugment ('rand-...') or AutoAugment policy "
                                  "with token_labels")
        if isinstance(step, tv.RandomApply) and all(isinstance(t, IMAGE_ONLY_STEPS) for t in step.transforms):
            return "image", step
        if isinstance(step, IMAGE_ONLY_STEPS):
            return "image", step
        ops = augment_ops(step)
        if ops:
            for op in ops:
                if op.name in GEOMETRIC_OPS:
                    op.aug_fn = _Noted(op.name, op.aug_fn, self._log)
                elif op.name not in PHOTOMETRIC_OPS:
                    raise TokenLabelError(f"augmentation {op.name} is neither a known geometric nor a photometric "
                                          "operation, so the label map cannot follow it: choose another auto_augment")
            return "augment", step
        raise TokenLabelError(f"the training transform has a step the label map cannot follow: {step!r}")

    def __call__(self, image: Image.Image, label_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        box = [0.0, 0.0, 1.0, 1.0]
        for kind, step in self.steps:
            self._log.clear()
            if kind == "hflip" or kind == "vflip":
                if torch.rand(1) < step.p:  # drawn as torchvision's flips draw
                    horizontal = kind == "hflip"
                    image = tvf.hflip(image) if horizontal else tvf.vflip(image)
                    label_map = label_map.flip(-1 if horizontal else -2)
                    axis = 0 if horizontal else 1
                    box[axis] = 1.0 - box[axis] - box[axis + 2]
                continue
            before = image.size if kind == "augment" else None
            image = step(image)
            if kind == "crop":
                (source, _, _), (top, left, height, width) = self._log[-1][1], self._log[-1][2]
                full_width, full_height = source.size
                box = [left / full_width, top / full_height, width / full_width, height / full_height]
            elif kind == "augment" and self._log:
                inverses = [_inverse_affine(name, tuple(args), before) for name, (_, *args), _ in self._log]
                label_map = _move_label_map(label_map, box, inverses, before)
        self._log.clear()  # no image kept alive between samples
        extra = label_map.new_zeros(1, *label_map.shape[1:])
        extra[0, 0, 0, CROP_BOX] = torch.tensor(box, dtype=extra.dtype)
        return image, torch.cat([label_map, extra])

    def __repr__(self) -> str:
        steps = "".join(f"\n    {step!r}" for _, step in self.steps)
        return f"{type(self).__name__}({steps}\n)"


# -- the dataset -----------------------------------------------------------------------------------
class TokenLabelDataset(ImageFolderDataset):
    """``(image, label map (3, k, S, S))`` for every training file: its LV-ViT map moved with the image.

    Unreadable images follow ``on_bad_image`` as in :class:`ImageFolderDataset` (a skipped image's
    neighbour comes with its own map); a missing or malformed label file always raises
    :class:`TokenLabelFileError`, since skipping it would silently train on a different set.
    """

    def __init__(self, samples: SampleList, classes: list[str], transform: LabelMapTrainTransform,
                 label_root: str | Path, label_shape: torch.Size, on_bad_image: str = "skip") -> None:
        super().__init__(samples, classes, transform, on_bad_image=on_bad_image)
        self.label_root = Path(label_root)
        self.label_shape = torch.Size(label_shape)

    def _item(self, image: Image.Image, index: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = label_file(self.label_root, os.fsdecode(self.samples.paths[index]))
        label_map = load_label_map(path, self.samples.path(index), self.label_shape)
        image, label_map = self.transform(image, label_map)
        label_map[2, 0, 0, IMAGE_LABEL] = target
        return image, label_map
