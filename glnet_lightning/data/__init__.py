"""Data modules: Fashion-MNIST (offline, in memory, for CPU experiments) and ImageNet-style folders."""
from .fashion_mnist import FashionMNISTDataModule, find_system_fashion_mnist
from .image_dataset import UnreadableImageError
from .image_folder import DatasetLayoutError, validate_layout
from .imagenet import ImageNetDataModule

__all__ = [
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "find_system_fashion_mnist",
    "validate_layout",
    "DatasetLayoutError",
    "UnreadableImageError",
]
