"""Fixtures for the shipped-path tests: every file in configs/ and sweeps/ run the way its comment
and the README say, on a small generated ImageNet-layout tree of real JPEGs, with CPU overrides
only (accelerator, devices, precision, steps, batch, workers, image size)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent

_spec = importlib.util.spec_from_file_location("e2e_cli_conftest", TESTS / "cli" / "conftest.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)
console_fixture = cli.console_fixture  # the console scripts as a user runs them
subprocess_env_fixture = cli.subprocess_env_fixture

#: What a user on a CPU machine changes in an ImageNet config, as LightningCLI / --set keys.
CPU_OVERRIDES = {
    "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.strategy": "auto",
    "trainer.precision": "32-true", "trainer.max_epochs": 1, "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 2, "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False,
    "data.batch_size": 4, "data.num_workers": 0, "data.image_size": 64,
}


def fit_args(overrides: dict) -> list[str]:
    """``--key value`` pairs as on the ``glnet fit`` command line."""
    return [arg for key, value in overrides.items() for arg in (f"--{key}", str(value).lower()
                                                                  if isinstance(value, bool) else str(value))]


def set_args(overrides: dict) -> list[str]:
    """``--set key=value`` pairs as on the ``glnet sweep`` command lines."""
    return [arg for key, value in overrides.items()
            for arg in ("--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}")]


@pytest.fixture(name="cpu_overrides")
def cpu_overrides_fixture() -> dict:
    return dict(CPU_OVERRIDES)


@pytest.fixture(name="fit_args")
def fit_args_fixture():
    return fit_args


@pytest.fixture(name="set_args")
def set_args_fixture():
    return set_args


@pytest.fixture(scope="session")
def imagenet_tree(tmp_path_factory) -> Path:
    """``train/`` and ``val/`` with 4 classes of random-noise JPEGs at odd sizes (one grayscale image
    per split), 6 training and 2 validation images per class: the layout the ImageNet configs read."""
    root = tmp_path_factory.mktemp("imagenet_tree")
    rng = np.random.default_rng(0)
    sizes = [(75, 61), (120, 97), (64, 64), (97, 130), (50, 77), (143, 89)]
    for split, per_class in (("train", 6), ("val", 2)):
        for c in range(4):
            for i in range(per_class):
                width, height = sizes[(c + i) % len(sizes)]
                image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
                if c == 1 and i == 0:
                    image = image.convert("L")
                path = root / split / f"n0{c:07d}" / f"{split}_{c}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path, format="JPEG", quality=90)
    return root
