"""Photos for the slot figures: from files, or the ones scikit-image ships (so it works offline).

Preprocessing is the evaluation view: centre square crop, resize to the model's training size,
normalise with its statistics (grey first for models trained on grey images).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glnet_lightning.errors import UserError

from .checkpoints import Preprocess

__all__ = ["NamedImage", "ImageError", "load_images", "to_batch", "DEFAULT_IMAGES"]

#: Photos bundled with scikit-image: a person, an animal, an object on a table.
DEFAULT_IMAGES = ("skimage:astronaut", "skimage:chelsea", "skimage:coffee")


class ImageError(UserError, ValueError):
    """An image that does not exist or cannot be decoded."""


@dataclass(frozen=True)
class NamedImage:
    name: str  # file stem (or the scikit-image name), used in titles and output file names
    pixels: np.ndarray  # uint8 (H, W, 3)


def _read(spec: str) -> NamedImage:
    if spec.startswith("skimage:"):
        import skimage.data

        name = spec.split(":", 1)[1]
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ImageError(f"scikit-image has no sample image {name!r} (try astronaut, chelsea, coffee)")
        pixels = loader()
    else:
        from PIL import Image, UnidentifiedImageError

        path = Path(spec).expanduser()
        if not path.is_file():
            raise ImageError(f"image {path} does not exist")
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"cannot read image {path}: {exc}") from exc
        name = path.stem
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return NamedImage(name, np.ascontiguousarray(pixels[..., :3]).astype(np.uint8))


def load_images(specs: Sequence[str] | None = None) -> list[NamedImage]:
    """Paths, or ``skimage:NAME`` for a scikit-image sample; ``None``/empty: :data:`DEFAULT_IMAGES`.

    Names are made unique (``cat``, ``cat-2``) as they name the output files."""
    images, seen = [], {}
    for spec in specs or DEFAULT_IMAGES:
        image = _read(str(spec))
        seen[image.name] = seen.get(image.name, 0) + 1
        if seen[image.name] > 1:
            image = NamedImage(f"{image.name}-{seen[image.name]}", image.pixels)
        images.append(image)
    return images


def square_view(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop resized to ``size`` x ``size``: uint8 (size, size, 3), what the model sees."""
    h, w = pixels.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = torch.from_numpy(np.ascontiguousarray(pixels[top:top + side, left:left + side])).permute(2, 0, 1)
    resized = F.interpolate(crop[None].float(), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)[0]
    return resized.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def to_batch(images: Sequence[NamedImage], preprocess: Preprocess) -> tuple[torch.Tensor, list[np.ndarray]]:
    """The normalised float batch (B, 3, S, S) and the uint8 views shown beside the maps."""
    views = [square_view(im.pixels, preprocess.size) for im in images]
    x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 255.0
    if preprocess.grayscale:
        grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = grey.expand(-1, 3, -1, -1)
        views = [np.repeat((grey[i, 0] * 255).round().byte().numpy()[..., None], 3, -1) for i in range(len(views))]
    mean = torch.tensor(preprocess.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous(), views
