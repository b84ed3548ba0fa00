"""An ImageFolder-like dataset that decides what an unreadable image does.

Why not torchvision's ImageFolder: a single corrupt or truncated JPEG in a
1.28M-image set kills a multi-day run with a bare PIL traceback that does not
say which file. Here ``on_bad_image="skip"`` replaces it with a readable
neighbour and counts it; ``"raise"`` fails with :class:`UnreadableImageError`
naming the file.

The set of bad files lives in a shared-memory flag per sample, so the count
is global across DataLoader worker processes and a file found bad by one
worker is not re-read (or re-reported) by the others.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .image_folder import SampleList

__all__ = ["ImageFolderDataset", "UnreadableImageError", "decode_rgb", "load_rgb", "BAD_IMAGE_POLICIES"]

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "raise")


class UnreadableImageError(OSError):
    """An image file could not be opened or fully decoded; the message names the file."""


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """Fully decode encoded image bytes as RGB (grayscale, palette, CMYK, RGBA are converted).

    ``load()`` forces the decode here, so a truncated file fails now rather than inside a
    transform. Any decoder error becomes :class:`UnreadableImageError` naming ``name``. Used for
    files (:func:`load_rgb`) and for the bytes stored in litdata shards alike.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for bad data
        detail = "not a known image format" if isinstance(exc, UnidentifiedImageError) else str(exc)  # not the BytesIO
        raise UnreadableImageError(f"cannot read image file {name}: {type(exc).__name__}: {detail}") from exc


def load_rgb(path: str) -> Image.Image:
    """:func:`decode_rgb` of the file at ``path``; an unreadable file is an :class:`UnreadableImageError` too."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise UnreadableImageError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from exc
    return decode_rgb(data, path)


class ImageFolderDataset(Dataset):
    """``(transform(image), class index)`` for every file of a :class:`SampleList`."""

    def __init__(
        self,
        samples: SampleList,
        classes: list[str],
        transform: Callable[[Image.Image], Any] | None = None,
        on_bad_image: str = "skip",
        max_bad_names: int = 5,
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.samples = samples
        self.classes = list(classes)
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.max_bad_names = max_bad_names
        # one byte per sample in shared memory: set to 1 once the file is known to be unreadable
        self._bad = torch.zeros(len(samples), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return self.samples.targets.tolist()

    @property
    def num_bad_images(self) -> int:
        """How many distinct files were found unreadable so far (all worker processes)."""
        return int(self._bad.sum())

    @property
    def bad_images(self) -> list[str]:
        """The first few unreadable files, in dataset order."""
        indices = torch.nonzero(self._bad, as_tuple=False).flatten()[: self.max_bad_names]
        return [self.samples.path(int(i)) for i in indices]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        for attempt in range(n):
            current = (index + attempt) % n
            if self._bad[current]:
                continue
            path, target = self.samples[current]
            try:
                image = load_rgb(path)
            except UnreadableImageError as exc:
                if self.on_bad_image == "raise":
                    raise
                self._mark_bad(current, exc)
                continue
            return self._item(image, current, target)
        raise UnreadableImageError(f"no readable image left in {self.samples.root}: all {n} files failed to load")

    def _item(self, image: Image.Image, index: int, target: int) -> tuple[Any, Any]:
        """The sample of a decoded image; ``index`` (the file actually read) lets a subclass load its companions."""
        return (self.transform(image) if self.transform is not None else image), target

    def _mark_bad(self, index: int, exc: UnreadableImageError) -> None:
        self._bad[index] = 1
        logger.warning(
            "Skipping unreadable image (%s); %d unreadable image(s) so far: %s",
            exc,
            self.num_bad_images,
            ", ".join(self.bad_images),
        )
