"""Data modules: Fashion-MNIST (offline, in memory, for CPU experiments) and ImageNet-style folders.

ImageNet-style data can also stream from litdata shards (``streaming.py``, written by
``glnet data prepare``); that module is not imported here because litdata is optional."""
from .ade20k import ADE20KDataModule, FashionScenesSegmentation
from .coco import COCODataModule, FashionScenesDetection
from .fashion_mnist import FashionMNISTDataModule, find_system_fashion_mnist
from .image_dataset import UnreadableImageError
from .image_folder import DatasetLayoutError, validate_layout
from .imagenet import ImageNetDataModule
from .token_labels import TokenLabelFileError

__all__ = [
    "ADE20KDataModule", "FashionScenesSegmentation",
    "COCODataModule", "FashionScenesDetection",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "find_system_fashion_mnist",
    "validate_layout",
    "DatasetLayoutError",
    "UnreadableImageError",
    "TokenLabelFileError",
]
