"""Scan and validate an ImageNet-style folder tree: ``root/{train,val}/<class>/<image>``.

Why up front: a missing split, an empty class folder or a class that exists
in only one split otherwise surfaces hours later as a wrong ``num_classes``,
a label mismatch or a crash in the first validation loop. Every error here
names the path and what is wrong.

File lists are kept as compact numpy byte arrays rather than a list of Python
strings, because DataLoader workers touching millions of Python objects turn
copy-on-write pages into real copies (one full copy of the list per worker).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glnet_lightning.errors import UserError

__all__ = [
    "IMG_EXTENSIONS",
    "DatasetLayoutError",
    "SampleList",
    "FolderLayout",
    "list_class_folders",
    "scan_split",
    "validate_layout",
]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetLayoutError(UserError, ValueError):
    """The folder tree exists but does not have the expected ``split/<class>/<image>`` shape."""


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@dataclass(frozen=True)
class SampleList:
    """Image files of one split: paths relative to ``root`` (fs-encoded bytes) and class indices."""

    root: Path
    paths: np.ndarray  # dtype "S<n>", relative paths
    targets: np.ndarray  # int64 class indices

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[index]))

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.path(index), int(self.targets[index])


@dataclass(frozen=True)
class FolderLayout:
    """Result of :func:`validate_layout`: shared class list and the two sample lists."""

    classes: list[str]
    train: SampleList
    val: SampleList


def list_class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``split_dir`` (one per class)."""
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _image_files(class_dir: Path) -> list[str]:
    """Image files below ``class_dir`` (recursively), relative to its parent, sorted."""
    found = []
    for folder, subdirs, files in os.walk(class_dir, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        rel = os.path.relpath(folder, class_dir.parent)
        found.extend(
            os.path.join(rel, f) for f in files if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)
        )
    return sorted(found)


def scan_split(split_dir: str | Path, classes: list[str] | None = None) -> SampleList:
    """Collect the images of one split; ``classes`` fixes the label order (default: this split's folders)."""
    split_dir = Path(split_dir)
    if classes is None:
        classes = list_class_folders(split_dir)
    paths: list[str] = []
    targets: list[int] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        files = _image_files(split_dir / name)
        if not files:
            empty.append(name)
        paths.extend(files)
        targets.extend([index] * len(files))
    if empty:
        raise DatasetLayoutError(
            f"{len(empty)} class folder(s) in {split_dir} contain no images "
            f"(looked for {', '.join(IMG_EXTENSIONS)}): {_preview([str(split_dir / n) for n in empty])}"
        )
    encoded = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
    return SampleList(split_dir, encoded, np.asarray(targets, dtype=np.int64))


def _require_split(root: Path, split: str) -> list[str]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"missing '{split}/' folder: {split_dir} does not exist (expected {root}/{split}/<class>/<image>)"
        )
    classes = list_class_folders(split_dir)
    if not classes:
        raise DatasetLayoutError(
            f"no class folders in {split_dir}: expected one sub-folder per class holding its images"
        )
    return classes


def validate_layout(root: str | Path) -> FolderLayout:
    """Check ``root/train`` and ``root/val`` and return their samples with one shared class list.

    Raises ``FileNotFoundError`` for a missing root or split folder and
    :class:`DatasetLayoutError` (a ``ValueError``) for no class folders, a class
    folder without images, or class folders present in only one split.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a directory")
    train_classes = _require_split(root, "train")
    val_classes = _require_split(root, "val")
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    if only_train:
        raise DatasetLayoutError(
            f"{len(only_train)} class(es) present in {root / 'train'} but missing in {root / 'val'}: "
            f"{_preview(only_train)}"
        )
    if only_val:
        raise DatasetLayoutError(
            f"{len(only_val)} class(es) present in {root / 'val'} but missing in {root / 'train'}: "
            f"{_preview(only_val)}"
        )
    return FolderLayout(
        classes=train_classes,
        train=scan_split(root / "train", train_classes),
        val=scan_split(root / "val", train_classes),
    )
