"""Fashion-MNIST as a LightningDataModule, held in memory and transformed per batch.

Why: Fashion-MNIST is the small, offline-available stand-in for ImageNet in this
repo (smoke tests, sweeps on CPU). The Debian ``dataset-fashion-mnist`` package
is preferred so nothing is downloaded; torchvision's downloader is only the
fallback, and only into the per-user cache: a ``root`` given by the user must
already hold the files, so a mistyped ``--data.root`` is one error line when the
module is built (before any data is read), not a download into the wrong place.
All pixel work (resize, 1 -> 3 channels, augmentation, normalisation) happens on
whole batches of tensors in :class:`GrayscaleBatchCollate`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from glnet_lightning.errors import UserError

from .collate import GrayscaleBatchCollate
from .idx import read_idx
from .in_memory import InMemoryImageDataset
from .resumable import resumable_loader

__all__ = [
    "FashionMNISTDataModule",
    "FashionMNISTNotFoundError",
    "find_system_fashion_mnist",
    "locate_fashion_mnist_files",
    "load_fashion_mnist_split",
    "default_cache_dir",
    "SYSTEM_DIRS",
    "CLASS_NAMES",
]

#: Where distribution packages put the files (Debian: ``dataset-fashion-mnist``).
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

#: Role -> IDX base name; each may exist bare or with a ``.gz`` suffix.
FILE_NAMES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: Pixel statistics of the 60k training images (values in [0, 1]).
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


class FashionMNISTNotFoundError(UserError, FileNotFoundError):
    """The four IDX files are not where the module was told (or allowed) to look; the message says how to get them."""


def _how_to_get_the_files() -> str:
    """The way out, for every message that says the files are missing."""
    names = [base + "[.gz]" for base in FILE_NAMES.values()]
    return (f"install the Debian package dataset-fashion-mnist (its files go to {SYSTEM_DIRS[0]}, used when "
            f"--data.root is unset) or point --data.root at a folder holding {', '.join(names[:-1])} and {names[-1]}")


def default_cache_dir() -> Path:
    """Per-user download location used when no system copy exists."""
    return Path.home() / ".cache" / "glnet_lightning" / "fashion_mnist"


def _find_file(directory: Path, base: str) -> Path | None:
    # torchvision downloads into <root>/FashionMNIST/raw and keeps both the .gz and the extracted file.
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for name in (base, base + ".gz"):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def _what_is_missing(directory: Path) -> str | None:
    """Why ``directory`` is not a Fashion-MNIST folder (it does not exist, or which files it lacks), or None."""
    if not directory.exists():
        return f"{directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    missing = [base + "[.gz]" for base in FILE_NAMES.values() if _find_file(directory, base) is None]
    if missing:
        return f"{directory} (or its FashionMNIST/raw/) has no {', '.join(missing)}"
    return None


def locate_fashion_mnist_files(directory: str | Path) -> dict[str, Path]:
    """Map each role in ``FILE_NAMES`` to its file in ``directory``; a :class:`FashionMNISTNotFoundError`
    (a ``FileNotFoundError``) naming what is missing otherwise."""
    directory = Path(directory).expanduser()
    reason = _what_is_missing(directory)
    if reason is not None:
        raise FashionMNISTNotFoundError(f"no Fashion-MNIST: {reason}")
    return {role: _find_file(directory, base) for role, base in FILE_NAMES.items()}  # type: ignore[misc]


def _has_all_files(directory: Path) -> bool:
    return _what_is_missing(directory) is None


def find_system_fashion_mnist() -> Path | None:
    """Return the system-wide Fashion-MNIST directory (Debian package) if it holds all four files, else None."""
    return next((d for d in SYSTEM_DIRS if _has_all_files(d)), None)


def load_fashion_mnist_split(files: dict[str, Path], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``split`` ("train" or "test") into ``uint8 (N, 28, 28)`` images and ``int64 (N,)`` labels.

    Checks that images and labels agree in count and that labels are 0..9, naming
    the offending file otherwise.
    """
    images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"IDX file {images_path} holds {images.dtype} images of shape {images.shape[1:]}, expected uint8 28x28"
        )
    if len(labels) != len(images):
        raise ValueError(
            f"IDX files disagree: {images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(
            f"IDX file {labels_path} has labels in [{labels.min()}, {labels.max()}], expected 0..{len(CLASS_NAMES) - 1}"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNISTDataModule(LightningDataModule):
    """Fashion-MNIST 60k/10k with a seeded validation slice taken from the training images.

    Batches are ``(float32 (B, 3, image_size, image_size), int64 (B,))``, normalised with
    :attr:`mean` / :attr:`std`. ``root=None`` uses the Debian package files when present,
    otherwise ``~/.cache/glnet_lightning/fashion_mnist`` (downloaded there by
    :meth:`prepare_data` if ``download``). A ``root`` given must hold the four IDX files
    (or torchvision's ``FashionMNIST/raw/`` below it): the constructor checks, nothing is
    downloaded there. ``predict`` iterates the test set.
    Training batches get a random horizontal flip and, with ``crop_padding`` > 0 (None:
    ``image_size // 8``), a random crop from the zero-padded image; 0 keeps the flip only,
    which trains better for runs of only a few epochs.
    """

    num_classes: int = len(CLASS_NAMES)
    class_names: tuple[str, ...] = CLASS_NAMES
    in_chans: int = 3
    mean: tuple[float, float, float] = (PIXEL_MEAN,) * 3
    std: tuple[float, float, float] = (PIXEL_STD,) * 3

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 2,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = True,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        crop_padding: int | None = None,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1 or num_workers < 0 or val_size < 0 or (crop_padding or 0) < 0:
            raise ValueError(
                "need image_size >= 1, batch_size >= 1, num_workers >= 0, val_size >= 0, crop_padding >= 0; got "
                f"image_size={image_size}, batch_size={batch_size}, num_workers={num_workers}, val_size={val_size}, "
                f"crop_padding={crop_padding}"
            )
        self.save_hyperparameters()
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_size = int(val_size)
        self.seed = int(seed)
        self.download = bool(download)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.crop_padding = None if crop_padding is None else int(crop_padding)
        self.root_given = root is not None
        self.data_dir = self._resolve_data_dir(root)
        if self.root_given or not self.download:
            self._files()  # a wrong --data.root is one error line now, before anything runs

        self.train_set: InMemoryImageDataset | None = None
        self.val_set: InMemoryImageDataset | None = None
        self.test_set: InMemoryImageDataset | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None

    @staticmethod
    def _resolve_data_dir(root: str | None) -> Path:
        if root is not None:
            return Path(root).expanduser()
        return find_system_fashion_mnist() or default_cache_dir()

    def _files(self) -> dict[str, Path]:
        """The four IDX files, or a :class:`FashionMNISTNotFoundError`: one line saying what was looked for
        where, and how to get the files."""
        reason = _what_is_missing(self.data_dir)
        if reason is None:
            return locate_fashion_mnist_files(self.data_dir)
        if self.root_given:
            raise FashionMNISTNotFoundError(f"--data.root {reason}; {_how_to_get_the_files()}")
        if not self.download:
            raise FashionMNISTNotFoundError(
                f"no Fashion-MNIST in {', '.join(map(str, SYSTEM_DIRS))} or {self.data_dir}, and --data.download is "
                f"false: set it true to download, or {_how_to_get_the_files()}"
            )
        raise FashionMNISTNotFoundError(f"no Fashion-MNIST yet: {reason}; call prepare_data() first (the Trainer does)")

    def prepare_data(self) -> None:
        """Download into the per-user cache when there is no copy and ``download`` is set (rank 0 only);
        never into a ``root`` the user gave (the constructor has checked it holds the files)."""
        if _has_all_files(self.data_dir):
            return
        if self.root_given or not self.download:
            self._files()  # raises, naming the directory and the missing files
        from torchvision.datasets import FashionMNIST

        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            FashionMNIST(str(self.data_dir), train=True, download=True)
        except Exception as exc:  # network / disk errors come in many types; one line with the path and a way out
            raise FashionMNISTNotFoundError(
                f"could not download Fashion-MNIST into {self.data_dir}: {' '.join(str(exc).split())}; offline, "
                f"{_how_to_get_the_files()}"
            ) from exc

    def setup(self, stage: str | None = None) -> None:
        """Load the needed split(s) into memory once; the validation slice is fixed by ``seed``."""
        files = self._files()
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = load_fashion_mnist_split(files, "train")
            if self.val_size >= len(labels):
                raise ValueError(f"val_size={self.val_size} must be smaller than the {len(labels)} training images")
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(labels), generator=generator)
            self.val_indices = order[: self.val_size].sort().values
            self.train_indices = order[self.val_size :].sort().values
            self.train_set = InMemoryImageDataset(images[self.train_indices], labels[self.train_indices])
            self.val_set = InMemoryImageDataset(images[self.val_indices], labels[self.val_indices])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = InMemoryImageDataset(*load_fashion_mnist_split(files, "test"))

    def collate(self, train: bool) -> GrayscaleBatchCollate:
        """The batch transform used by the loaders (exposed for notebooks and tests)."""
        return GrayscaleBatchCollate(self.image_size, PIXEL_MEAN, PIXEL_STD, train=train, padding=self.crop_padding,
                                     channels=self.in_chans)

    def _loader(self, dataset: InMemoryImageDataset | None, stage: str, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) before requesting its dataloader")
        # training: a loader whose position and augmentation state a mid-epoch checkpoint keeps
        return (resumable_loader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate(train),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            generator=None if train else torch.Generator(),  # evaluation leaves the training random stream alone
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "fit", train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_size == 0:
            return []  # no validation slice requested: Lightning then skips validation
        return self._loader(self.val_set, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "predict")
