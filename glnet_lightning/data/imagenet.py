"""ImageNet-1k (or any ``train/`` + ``val/`` class-folder tree) as a LightningDataModule.

Why: implements the data half of the GLNet recipe (docs/design.md, section 2):
timm's RandAugment m9 mstd0.5 / colour jitter 0.4 / random erasing 0.25 (pixel
mode) / bicubic train pipeline, crop-pct 0.875 bicubic evaluation, and DeiT's
repeated augmentation under DDP. Mixup / CutMix and label smoothing act on
batches and belong to the LightningModule, not here.

Two loading paths with the same transforms, labels and loader settings: the
folder tree (``root``) or litdata shards written from it by ``glnet data prepare``
(``streaming``: a local directory or an object-store URL), for storage where
opening 1.28 M small files is the bottleneck.

Token labeling (``token_labels``: LV-ViT's label maps, folder tree only) changes the training batches
to ``(images, label maps (B, 3, k, S, S))``; see ``token_labels.py``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset

from glnet_lightning.token_labeling import TokenLabelError

from .augment_compat import patch_posterize
from .image_dataset import BAD_IMAGE_POLICIES, ImageFolderDataset
from .image_folder import FolderLayout, validate_layout
from .resumable import resumable_loader
from .samplers import RepeatAugDistributedSampler
from .token_labels import LabelMapTrainTransform, TokenLabelDataset, check_label_files

__all__ = ["ImageNetDataModule"]

logger = logging.getLogger(__name__)


def _streaming_api():
    """``glnet_lightning.data.streaming``, imported on first use: litdata is an optional dependency."""
    from . import streaming

    return streaming


class ImageNetDataModule(LightningDataModule):
    """``root/train/<class>/*`` for training, ``root/val/<class>/*`` for validation, test and predict.

    The layout is checked in :meth:`setup` (see :func:`validate_layout` for the
    errors). Unreadable images follow ``on_bad_image`` ("skip" or "raise"); the
    skip count is available as :meth:`bad_image_counts`.

    ``streaming`` (instead of ``root``) reads the shards ``glnet data prepare``
    wrote: same classes and labels; unreadable files were handled when writing,
    under prepare's ``--on-bad-image`` (:meth:`bad_image_counts` reports those). litdata splits the stream between
    DDP ranks itself, so DeiT repeated augmentation (an index sampler) cannot be
    applied: ``repeated_aug=True`` with more than one process is an error there.
    Remote shards are cached under ``$LITDATA_CACHE_DIR`` (litdata's default:
    ``~/.lightning/chunks``).

    ``token_labels`` (a folder of LV-ViT label maps, ``<class>/<image stem>.pt``, (2, k, S, S)) makes
    the training batches ``(images, label maps (B, 3, k, S, S))``: the maps moved with each crop, flip
    and geometric RandAugment operation, the third row holding the crop box at ``[0, 0, :4]`` and the
    class index at ``[0, 0, 5]`` (what ``token_labeling.token_label_targets`` reads). :meth:`setup`
    checks that every training image has its file. Validation and test batches are unchanged.
    """

    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
    in_chans: int = 3

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 224,
        batch_size: int = 128,
        num_workers: int = 8,
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float = 0.4,
        re_prob: float = 0.25,
        repeated_aug: bool = True,
        on_bad_image: str = "skip",
        pin_memory: bool = True,
        persistent_workers: bool = True,
        streaming: str | None = None,
        token_labels: str | None = None,
    ) -> None:
        super().__init__()
        if (root is None) == (streaming is None):
            raise ValueError(
                "give exactly one data source: root (the folder tree) or streaming (litdata shards written by "
                f"'glnet data prepare'); got root={root!r}, streaming={streaming!r}"
            )
        if token_labels is not None and streaming is not None:
            raise TokenLabelError(
                "token_labels cannot be combined with streaming: the litdata shards do not hold the label maps; "
                "train with token labels from the folder tree (root=...)"
            )
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if image_size < 1 or batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need image_size >= 1, batch_size >= 1, num_workers >= 0; got image_size={image_size}, "
                f"batch_size={batch_size}, num_workers={num_workers}"
            )
        if streaming is not None:
            _streaming_api()  # fails now, with the install hint, if litdata is missing
        self.save_hyperparameters()
        self.root = Path(root).expanduser() if root is not None else None
        self.streaming = streaming
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.crop_pct = float(crop_pct)
        self.interpolation = interpolation
        self.auto_augment = auto_augment
        self.color_jitter = color_jitter
        self.re_prob = re_prob
        self.repeated_aug = repeated_aug
        self.on_bad_image = on_bad_image
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.token_labels = Path(token_labels).expanduser() if token_labels is not None else None

        self._layout: FolderLayout | None = None
        self._meta: dict[str, Any] | None = None
        self.train_set: Dataset | None = None  # ImageFolderDataset or streaming.StreamingImageDataset
        self.val_set: Dataset | None = None

    # -- layout ---------------------------------------------------------------------------------
    @property
    def layout(self) -> FolderLayout:
        """The validated folder tree (scanned once, on first use)."""
        if self.root is None:
            raise AttributeError("layout exists only with root=... (this module streams shards)")
        if self._layout is None:
            self._layout = validate_layout(self.root)
        return self._layout

    @property
    def shard_meta(self) -> dict[str, Any]:
        """Class list and per-split counts stored with the shards (streaming only; read once)."""
        if self.streaming is None:
            raise AttributeError("shard_meta exists only with streaming=...")
        if self._meta is None:
            self._meta = _streaming_api().read_meta(self.streaming)
        return self._meta

    @property
    def class_names(self) -> list[str]:
        return list(self.shard_meta["classes"]) if self.streaming is not None else self.layout.classes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- transforms -----------------------------------------------------------------------------
    def train_transform(self) -> Callable[[Any], torch.Tensor]:
        """timm's training pipeline: random-resized crop, flip, RandAugment, jitter, random erasing."""
        transform = create_transform(
            input_size=self.image_size,
            is_training=True,
            auto_augment=self.auto_augment,
            color_jitter=self.color_jitter,
            interpolation=self.interpolation,
            re_prob=self.re_prob,
            re_mode="pixel",
            re_count=1,
            mean=self.mean,
            std=self.std,
        )
        patch_posterize(transform)  # Pillow >= 13 rejects the 0-bit posterize timm can ask for
        return transform

    def token_label_transform(self) -> LabelMapTrainTransform:
        """:meth:`train_transform` applied to an image and its label map together (``token_labels``)."""
        return LabelMapTrainTransform(self.train_transform())

    def eval_transform(self) -> Callable[[Any], torch.Tensor]:
        """timm's evaluation pipeline: resize to image_size / crop_pct, centre crop, normalise."""
        return create_transform(
            input_size=self.image_size,
            is_training=False,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            mean=self.mean,
            std=self.std,
        )

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Validate the layout (or read the shards' metadata), then build the datasets the stage needs."""
        if self.streaming is not None:
            self._setup_streaming(stage)
            return
        layout = self.layout
        if stage in (None, "fit") and self.train_set is None:
            if self.token_labels is not None:
                transform = self.token_label_transform()  # refuses augmentations a label map cannot follow
                self.train_set = TokenLabelDataset(
                    layout.train, layout.classes, transform, self.token_labels,
                    check_label_files(self.token_labels, layout.train, len(layout.classes)),
                    on_bad_image=self.on_bad_image,
                )
            else:
                self.train_set = ImageFolderDataset(
                    layout.train, layout.classes, self.train_transform(), on_bad_image=self.on_bad_image
                )
        if self.val_set is None:  # fit, validate, test and predict all use val/
            self.val_set = ImageFolderDataset(
                layout.val, layout.classes, self.eval_transform(), on_bad_image=self.on_bad_image
            )

    def _streaming_split(self, split: str, transform: Callable[[Any], torch.Tensor], shuffle: bool) -> Dataset:
        report = self.shard_meta["splits"].get(split)
        if report is None:
            raise FileNotFoundError(
                f"{self.streaming} has no {split!r} shards: run 'glnet data prepare --splits {split}' for it"
            )
        api = _streaming_api()
        return api.StreamingImageDataset(
            api.join_location(self.streaming, split),
            image_transform=transform,
            shuffle=shuffle,
            bad_images=report["bad_images"],
            num_bad_images=report["num_bad_images"],
        )

    def _setup_streaming(self, stage: str | None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._streaming_split("train", self.train_transform(), shuffle=True)
        if self.val_set is None:
            self.val_set = self._streaming_split("val", self.eval_transform(), shuffle=False)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(getattr(trainer, "world_size", 1)), int(getattr(trainer, "global_rank", 0))

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before requesting the train dataloader")
        world_size, rank = self._world()
        if self.streaming is not None:
            return self._streaming_loader(self.train_set, train=True, world_size=world_size)
        sampler = None
        if self.repeated_aug and world_size > 1:
            sampler = RepeatAugDistributedSampler(self.train_set, num_replicas=world_size, rank=rank)
        # a loader whose position and augmentation state a mid-epoch checkpoint keeps
        return resumable_loader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=len(self.train_set) >= self.batch_size * world_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def _streaming_loader(self, dataset: Dataset, train: bool, world_size: int = 1) -> DataLoader:
        """litdata's loader (it advances the shuffle each epoch and can save its position in checkpoints)."""
        if train and self.repeated_aug and world_size > 1:
            raise ValueError(
                "repeated_aug=True cannot be combined with streaming: litdata splits the shards between the "
                f"{world_size} processes itself, leaving no index sampler to repeat samples across them; set "
                "repeated_aug: false (--data.repeated_aug false) or train from the folder tree (root=...)"
            )
        # train: every rank and worker gets whole batches only, as drop_last does on the folder path
        drop_last = train and self.shard_meta["splits"]["train"]["num_samples"] >= self.batch_size * world_size
        return _streaming_api().litdata.StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            # its own generator for the worker seeds (augmentation is seeded per sample, streaming.sample_rng):
            # litdata starts its workers on the first batch, which must not move the training random stream
            generator=torch.Generator(),
        )

    def _eval_loader(self, stage: str) -> DataLoader:
        if self.val_set is None:
            raise RuntimeError(f"call setup({stage!r}) before requesting its dataloader")
        if self.streaming is not None:
            return self._streaming_loader(self.val_set, train=False)
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            generator=torch.Generator(),  # its worker seeds: evaluation leaves the training random stream alone
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validate")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    # -- reporting ------------------------------------------------------------------------------
    def bad_image_counts(self) -> dict[str, int]:
        """Unreadable images skipped so far per split (counted across worker processes)."""
        return {
            name: dataset.num_bad_images
            for name, dataset in (("train", self.train_set), ("val", self.val_set))
            if dataset is not None
        }

    def teardown(self, stage: str | None = None) -> None:
        for name, dataset in (("train", self.train_set), ("val", self.val_set)):
            if dataset is not None and dataset.num_bad_images:
                logger.warning(
                    "%d unreadable image(s) were skipped in %s/: %s",
                    dataset.num_bad_images,
                    name,
                    ", ".join(dataset.bad_images),
                )
