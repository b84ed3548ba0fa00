"""The tiny ImageNet-style tree of real JPEG files shared by the folder and streaming tests
(the repo runs pytest with --import-mode=importlib, so shared helpers are fixtures)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["cat", "dog", "fox"]
BAD_FILES = ["train/cat/cat_bad.JPEG", "train/dog/dog_truncated.JPEG"]


def _save_jpeg(path: Path, mode: str = "RGB", size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    rgb.convert(mode).save(path, format="JPEG", quality=95)
    return path


@pytest.fixture(scope="session")
def save_jpeg() -> Callable[..., Path]:
    """``save_jpeg(path, mode="RGB", size=(48, 40), seed=0)``: a random-noise JPEG file."""
    return _save_jpeg


@pytest.fixture(scope="session")
def tree_classes() -> list[str]:
    return list(CLASSES)


@pytest.fixture(scope="session")
def bad_files() -> list[str]:
    """The unreadable files of :func:`tree`, relative to its root: random bytes, then a truncated JPEG."""
    return list(BAD_FILES)


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
    """train: 4 cat (1 garbage), 4 dog (1 truncated), 3 fox (1 grayscale, 1 CMYK); val: 2 per class."""
    root = tmp_path_factory.mktemp("imagenet")
    seed = 0
    for name in CLASSES:
        for i in range(3 if name != "fox" else 1):
            seed += 1
            _save_jpeg(root / "train" / name / f"{name}_{i}.JPEG", seed=seed)
        for i in range(2):
            seed += 1
            _save_jpeg(root / "val" / name / f"{name}_val_{i}.JPEG", mode="L" if i else "RGB", seed=seed)
    _save_jpeg(root / "train" / "fox" / "fox_gray.JPEG", mode="L", seed=100)
    _save_jpeg(root / "train" / "fox" / "fox_cmyk.JPEG", mode="CMYK", seed=101)
    (root / BAD_FILES[0]).write_bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    whole = _save_jpeg(root / BAD_FILES[1], seed=102).read_bytes()
    (root / BAD_FILES[1]).write_bytes(whole[: len(whole) // 2])
    (root / "train" / "cat" / "notes.txt").write_text("not an image, must be ignored")
    return root
